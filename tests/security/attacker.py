# The office box as an attacker on the LAN meets it: the LAN SMTP listener
# and POP3 on loopback, over the real spool and mailboxes, in this event
# loop (both runtimes). The client is small on purpose: compiling the
# firmware tests' clients from source would take the heap the box needs.
import asyncio

import support
from gateway import config, lan, pop3
from gateway.mailbox import Mailboxes
from gateway.policy import Policy
from gateway.smtp import server
from gateway.spool import Spool

# Two session buffers made now, while the heap is whole, as the App does.
server.reserve(2)

# carol has addresses but no password: the config's default "".
USERS = dict(support.OFFICE["users"], carol={"addresses": ["carol@example.test"]})
# The attacks log in with PLAIN for brevity, so they allow it without TLS
# (the old-client switch); test_clear_text holds the default.
CFG = {"users": USERS, "catch_all": {}, "smtp": {"allow": ["127.0.0.0/8"], "max_size": 100000}, "clear_text_logins": True}


class Client:
    """A line-based client for both protocols: SMTP replies as (code,
    [texts]) from cmd(); POP3 status lines from pop() and line()."""

    def __init__(self, r, w):
        self.r, self.w = r, w

    async def line(self):
        return (await self.r.readline()).decode().rstrip("\r\n")

    async def reply(self):
        lines = []
        while True:
            line = await self.line()
            if not line:
                return 0, lines
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), lines

    async def send(self, raw):
        self.w.write(raw)
        await self.w.drain()

    async def cmd(self, text):
        await self.send(text.encode() + b"\r\n")
        return await self.reply()

    async def pop(self, text):
        await self.send(text.encode() + b"\r\n")
        return await self.line()

    async def closed(self):
        """True once the box has hung up (what is left unread is dropped)."""
        while True:
            data = await self.r.read(256)
            if not data:
                return True

    async def close(self):
        self.w.close()
        try:
            await self.w.wait_closed()
        except OSError:
            pass  # the box hung up first


async def send(c, mail_from, rcpts, body=b"Subject: hi\r\n\r\nhello\r\n"):
    """Codes of MAIL, each RCPT, and DATA's final reply (or None)."""
    codes = [(await c.cmd("MAIL FROM:<%s>" % mail_from))[0]]
    for r in rcpts:
        codes.append((await c.cmd("RCPT TO:<%s>" % r))[0])
    if 250 in codes[1:]:
        if (await c.cmd("DATA"))[0] == 354:
            await c.send(body + b".\r\n")
            codes.append((await c.reply())[0])
    else:
        await c.cmd("RSET")
    return codes


class Office:
    """Both listeners of the box on random loopback ports; use as
    `await office.start()` ... `office.stop()`."""

    def __init__(self, cfg=CFG):
        root = support.tmpdir()
        cfg = config.validate(cfg)  # as on the box: every default filled in
        self.cfg = cfg
        self.policy = Policy(cfg)
        self.spool = Spool(root + "/spool")
        self.spool.recover()
        self.boxes = Mailboxes(root + "/mail", self.policy)
        self.servers = []

    async def _listen(self, start):
        import random

        for _ in range(50):
            port = random.randrange(20000, 60000)
            try:
                self.servers.append(await start(port))
                return port
            except OSError:
                pass
        raise OSError("no free port")

    async def start(self):
        cfg = self.cfg  # the session counts as the App passes them
        self.smtp_port = await self._listen(lambda p: lan.serve(cfg, self.spool, self.policy, "127.0.0.1", p,
                                                                   self.boxes.deliver_pending, None, cfg["smtp"]["sessions"]))
        self.pop3_port = await self._listen(lambda p: pop3.serve(cfg, self.boxes, "127.0.0.1", p, cfg["pop3"]["sessions"]))
        return self

    def stop(self):
        for s in self.servers:
            s.close()

    async def smtp(self, helo="pc.example.test"):
        r, w = await asyncio.open_connection("127.0.0.1", self.smtp_port)
        c = Client(r, w)
        c.greeting = await c.reply()
        if helo and c.greeting[0] == 220:
            c.ehlo = await c.cmd("EHLO " + helo)
        return c

    async def pop(self):
        r, w = await asyncio.open_connection("127.0.0.1", self.pop3_port)
        c = Client(r, w)
        c.greeting = await c.line()
        return c


def attack(office, script):
    """Runs script(office) against a started office, stopped afterwards."""

    async def main():
        await office.start()
        try:
            await script(office)
        finally:
            office.stop()

    support.run(main())
