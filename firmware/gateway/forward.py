# Optional forwarding: mail for some users, or for every user of a domain,
# goes on to an internal SMTP host (say the office's groupware server)
# instead of into a mailbox. cfg["forward"] = {"bob": "10.0.0.5:25",
# "sales.example.test": "10.0.0.6"}; the key is a user name or a domain.
#
# The message stays in the spool's "local" queue until the internal host has
# said 250; a 4xx or a dead host leaves it there for the next try. A 5xx for
# a recipient is never a loss: that copy goes into the user's mailbox
# instead. A crash between the host's 250 and spool.done sends it again (a
# duplicate, the price RFC 5321 6.1 accepts, never a loss).
import asyncio

from gateway import log
from gateway.compat import const
from gateway.smtp.dots import end_of_data, stuff
from gateway.wire import LineReader, ProtocolError, read_reply

_CHUNK = const(512)


def parse_target(text):
    """(host, port) from "host" or "host:port"."""
    host, _, port = text.partition(":")
    return host, int(port) if port else 25


class Temporary(Exception):
    """The internal host cannot take the message now: try again later."""


class Forwarder:
    TIMEOUT = 120  # s for one whole SMTP conversation

    def __init__(self, cfg, policy):
        self.hostname = cfg.get("hostname") or "gateway"
        self.policy = policy
        self.buf = bytearray(_CHUNK)
        self.busy = False
        self.again = False

    def kick(self, spool):
        """Start a flush in the background (Mailboxes.deliver_pending calls
        this whenever it left recipients for forwarding, so every delivery
        pass, the poll cycle's included, retries); one flush at a time, so
        two overlapping flushes never send a message twice."""
        if self.busy:
            self.again = True
            return
        run = self._run(spool)
        try:
            asyncio.create_task(run)
        except RuntimeError:  # no event loop yet (boot): the next delivery kicks
            run.close()
            return
        self.busy = True

    async def _run(self, spool):
        try:
            self.again = True
            while self.again:
                self.again = False
                await self.flush(spool)
        except Exception as e:  # a background task must log, not vanish
            log.error("forward: %r" % (e,))
        finally:
            self.busy = False

    async def flush(self, spool):
        """Forwards every pending "local" recipient that has a forward
        target; returns how many recipients the internal hosts took."""
        boxes = self.policy.mailboxes
        sent = 0
        fell_back = False
        for id in spool.walk("local"):
            env = spool.envelope(id)
            groups = {}
            for addr, queue in env.rcpts:
                target = self.policy.forward_for(addr) if queue == "local" else None
                if target and not boxes.kept_here(id, addr):
                    groups.setdefault(target, []).append(addr)
            for target, addrs in groups.items():
                try:
                    ok, refused = await asyncio.wait_for(self._send(target, env, addrs, spool), self.TIMEOUT)
                except (OSError, EOFError, ProtocolError, Temporary, asyncio.TimeoutError) as e:
                    log.warn("forward: %s to %s not sent (%r), tried again later" % (id, target, e))
                    continue
                if ok:
                    spool.done(id, "local", ok)
                    sent += len(ok)
                    log.info("forward: %s to %s for %d recipient(s)" % (id, target, len(ok)))
                for addr in refused:
                    log.warn("forward: %s refused <%s> of %s; kept in the mailbox" % (target, addr, id))
                    boxes.keep_here(id, addr)
                    fell_back = True
        if fell_back:
            spool.rescan = True  # what the forward host refused is the hand-off's again
            boxes.deliver_pending(spool)
        return sent

    async def _send(self, target, env, addrs, spool):
        """(accepted, permanently refused) recipients; raises Temporary."""
        host, port = parse_target(target)
        r, w = await asyncio.open_connection(host, port)
        try:
            lines = LineReader(r, 512)

            async def cmd(text):
                w.write(text.encode() + b"\r\n")
                await w.drain()
                return (await read_reply(lines))[0]

            if (await read_reply(lines))[0] != 220:
                raise Temporary("no 220 greeting")
            if await cmd("EHLO " + self.hostname) != 250 and await cmd("HELO " + self.hostname) != 250:
                raise Temporary("EHLO and HELO refused")
            code = await cmd("MAIL FROM:<%s>" % env.mail_from)
            if code >= 500:
                return [], addrs
            if code != 250:
                raise Temporary("MAIL %d" % code)
            ok = []
            refused = []
            for addr in addrs:
                code = await cmd("RCPT TO:<%s>" % addr)
                if code in (250, 251):
                    ok.append(addr)
                elif code >= 500:
                    refused.append(addr)
            if not ok:
                return ok, refused
            code = await cmd("DATA")
            if code != 354:
                if code >= 500:
                    return [], refused + ok
                raise Temporary("DATA %d" % code)
            await self._body(w, spool, env)
            code = (await read_reply(lines))[0]
            if code >= 500:
                return [], refused + ok
            if code != 250:
                raise Temporary("end of data %d" % code)
            try:
                await cmd("QUIT")
            except (OSError, EOFError, ProtocolError):
                pass  # the message is delivered; a rude hang-up changes nothing
            return ok, refused
        finally:
            w.close()
            await w.wait_closed()

    async def _body(self, w, spool, env):
        """The spooled message, dot-stuffed, then the terminator."""
        buf = self.buf
        mv = memoryview(buf)
        bol = True
        with spool.open(env.id, env) as body:
            while True:
                n = body.readinto(buf)
                if not n:
                    break
                bol = stuff(w.write, buf, mv, n, bol)
                await w.drain()
        w.write(end_of_data(bol))
        await w.drain()
