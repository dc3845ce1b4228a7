# The LAN listener end to end in one event loop: the receiver's SMTP engine
# with the LanHandler, the real spool and mailboxes. swaks, smtplib and the
# whole open-relay matrix against the micropython process are in tests/e2e.
import asyncio

import support

# Validated before the firmware's modules load, as the box does at boot: the
# validator's code is dropped again and its room goes to what follows.
CFG = support.config(dict(support.OFFICE, smtp={"allow": ["127.0.0.0/8"], "max_size": 100000}))
OUTSIDE_ALLOW = support.config(dict(support.OFFICE, smtp={"allow": ["10.0.0.0/8", "192.168.0.0/16"]}))

from gateway import lan, sasl  # noqa: E402
from gateway.mailbox import Mailboxes  # noqa: E402
from gateway.policy import Policy  # noqa: E402
from gateway.spool import Spool  # noqa: E402

# One process holds both ends: the LAN listener (engine, spool, mailbox,
# policy as .mpy) and the test's SMTP client and card. The listener on its
# own is measured in tests/e2e/test_local.py. This module is compiled from
# source in the same heap, so each test it holds costs room too. 160k held
# it with a partial config; the validated one the box holds takes 176k.
MICROPYTHON_HEAP = "176k"


class Client:
    def __init__(self, r, w):
        self.r, self.w = r, w

    async def reply(self):
        lines = []
        while True:
            line = (await self.r.readline()).decode().rstrip("\r\n")
            if not line:
                return 0, lines
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), lines

    async def cmd(self, text):
        self.w.write(text.encode() + b"\r\n")
        await self.w.drain()
        return await self.reply()

    async def close(self):
        self.w.close()
        await self.w.wait_closed()


class Gateway:
    """Spool, mailboxes and the LAN listener on a random loopback port."""

    def __init__(self, cfg=CFG):
        root = support.tmpdir()
        self.cfg = cfg
        self.policy = Policy(cfg)
        self.spool = Spool(root + "/spool")
        self.spool.recover()
        self.boxes = Mailboxes(root + "/mail", self.policy)
        self.pokes = 0

    def poke(self):
        self.pokes += 1

    async def start(self, sessions=4):
        import random

        for _ in range(50):
            self.port = random.randrange(20000, 60000)
            try:
                self.srv = await lan.serve(self.cfg, self.spool, self.policy, "127.0.0.1", self.port,
                                           self.boxes.deliver_pending, self.poke, sessions)
                return
            except OSError:
                pass
        raise OSError("no free port")

    async def client(self, ehlo=True):
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        c = Client(r, w)
        c.greeting = await c.reply()
        if ehlo and c.greeting[0] == 220:
            c.ehlo = await c.cmd("EHLO pc.example.test")
        return c


async def send(c, mail_from, rcpts, body=b"Subject: hi\r\n\r\nhello\r\n"):
    """Codes of MAIL, each RCPT, and DATA's final reply (or None)."""
    codes = [(await c.cmd("MAIL FROM:<%s>" % mail_from))[0]]
    for r in rcpts:
        codes.append((await c.cmd("RCPT TO:<%s>" % r))[0])
    if 250 in codes[1:]:
        if (await c.cmd("DATA"))[0] == 354:
            c.w.write(body + b".\r\n")
            codes.append((await c.reply())[0])
    else:
        await c.cmd("RSET")
    return codes


def test_local_mail_is_in_the_mailbox_right_after_the_250():
    gw = Gateway()

    async def main():
        await gw.start()
        try:
            c = await gw.client()
            assert "AUTH CRAM-MD5" in c.ehlo[1]  # PLAIN and LOGIN only inside TLS
            assert await send(c, "bob@example.test", ["alice@example.test", "nobody@example.test"]) == [250, 250, 550, 250]
            await c.cmd("QUIT")
            await c.close()
        finally:
            gw.srv.close()

    support.run(main())
    assert len(gw.boxes.listing("alice")) == 1
    assert gw.spool.ids("local") == [] and gw.spool.ids("out") == []
    assert gw.pokes == 0


def test_outside_mail_needs_auth_by_each_mechanism():
    gw = Gateway(dict(CFG, clear_text_logins=True))  # PLAIN and LOGIN without TLS, for an old client

    async def main():
        await gw.start()
        try:
            c = await gw.client()
            assert await send(c, "alice@example.test", ["friend@outside.test"]) == [250, 550]
            assert (await c.cmd("AUTH PLAIN " + sasl.plain_response("alice", "wrong").decode()))[0] == 535
            assert await send(c, "alice@example.test", ["friend@outside.test"]) == [250, 550]
            assert (await c.cmd("AUTH PLAIN " + sasl.plain_response("alice", "alice-pw").decode()))[0] == 235
            assert await send(c, "alice@example.test", ["friend@outside.test", "bob@example.test"]) == [250, 250, 250, 250]
            await c.close()

            c = await gw.client()
            assert (await c.cmd("AUTH LOGIN"))[0] == 334
            assert (await c.cmd(sasl.b64encode(b"bob").decode()))[0] == 334
            assert (await c.cmd(sasl.b64encode(b"bob-pw").decode()))[0] == 235
            assert await send(c, "bob@example.test", ["x@outside.test"]) == [250, 250, 250]
            await c.close()

            c = await gw.client()
            code, lines = await c.cmd("AUTH CRAM-MD5")
            assert code == 334
            assert (await c.cmd(sasl.cram_md5_response("bob", "bob-pw", lines[0].encode()).decode()))[0] == 235
            assert await send(c, "bob@example.test", ["y@outside.test"]) == [250, 250, 250]
            await c.close()

            c = await gw.client()
            code, lines = await c.cmd("AUTH CRAM-MD5")
            assert (await c.cmd(sasl.cram_md5_response("bob", "guess", lines[0].encode()).decode()))[0] == 535
            assert await send(c, "bob@example.test", ["z@outside.test"]) == [250, 550]
            await c.close()
        finally:
            gw.srv.close()

    support.run(main())
    assert len(gw.spool.ids("out")) == 3
    assert gw.pokes == 3
    assert len(gw.boxes.listing("bob")) == 1  # the local copy went straight in


def test_unauthenticated_routing_tricks_never_reach_the_out_queue():
    cfg = dict(CFG)
    cfg["catch_all"] = {"example.test": "bob"}
    gw = Gateway(cfg)
    tricks = ["friend@outside.test", "friend%outside.test@example.test", '"friend@outside.test"@example.test',
              "outside.test!friend@example.test", "@example.test:friend@outside.test", "friend@outside.test.",
              "friend@outside.test@example.test", "friend@[192.0.2.1]"]

    async def main():
        await gw.start()
        try:
            c = await gw.client()
            for t in tricks:
                codes = await send(c, "alice@example.test", [t])
                assert codes[0] == 250 and codes[1] >= 500, (t, codes)
            await c.cmd("QUIT")
            await c.close()
        finally:
            gw.srv.close()

    support.run(main())
    assert gw.spool.ids("out") == [] and gw.spool.ids("local") == []
    assert gw.pokes == 0


def test_networks_outside_the_allow_list_are_turned_away():
    gw = Gateway(OUTSIDE_ALLOW)

    async def main():
        await gw.start()
        try:
            c = await gw.client()
            code, lines = c.greeting
            assert code == 554 and lines[0].startswith("5.7.1")
            assert await c.r.read(100) == b""
            await c.close()
        finally:
            gw.srv.close()

    support.run(main())


def test_a_session_over_capacity_is_refused_before_it_starts_and_a_retry_gets_in():
    """smtp.sessions office PCs at once: one more gets 421 4.3.2 as its
    greeting, never a failure half-way; once a session ends, it gets in."""
    gw = Gateway()

    async def main():
        await gw.start(sessions=1)  # one: this process holds both ends in 128k
        try:
            first = await gw.client()
            over = await gw.client()
            assert over.greeting[0] == 421 and over.greeting[1][0].startswith("4.3.2"), over.greeting
            await over.close()
            assert await send(first, "bob@example.test", ["alice@example.test"]) == [250, 250, 250]
            await first.cmd("QUIT")
            await first.close()
            for _ in range(100):  # the listener sees the hang-up within a few turns of the loop
                await asyncio.sleep(0.01)
                retry = await gw.client()
                if retry.greeting[0] == 220:
                    break
                await retry.close()
            assert retry.greeting[0] == 220
            assert await send(retry, "bob@example.test", ["alice@example.test"]) == [250, 250, 250]
            await retry.cmd("QUIT")
            await retry.close()
        finally:
            gw.srv.close()

    support.run(main())
    assert len(gw.boxes.listing("alice")) == 2


def test_a_mail_pipelined_after_the_final_dot_does_not_skip_the_hand_off():
    """A client that sends its next MAIL in the same packet as <CRLF>.<CRLF>
    starts the next transaction before the 250's hand-off runs: the local
    message must still be in the mailbox at once, and outgoing mail must
    still poke the scheduler (the queues travel with the committed id)."""
    gw = Gateway()

    async def main():
        await gw.start()
        try:
            c = await gw.client()
            code, lines = await c.cmd("AUTH CRAM-MD5")
            assert (await c.cmd(sasl.cram_md5_response("bob", "bob-pw", lines[0].encode()).decode()))[0] == 235
            for rcpt in ("alice@example.test", "x@outside.test"):
                assert (await c.cmd("MAIL FROM:<bob@example.test>"))[0] == 250
                assert (await c.cmd("RCPT TO:<%s>" % rcpt))[0] == 250
                assert (await c.cmd("DATA"))[0] == 354
                c.w.write(b"Subject: hi\r\n\r\nhello\r\n.\r\nMAIL FROM:<bob@example.test>\r\n")
                await c.w.drain()
                assert (await c.reply())[0] == 250  # queued
                assert (await c.reply())[0] == 250  # the pipelined MAIL
                assert (await c.cmd("RSET"))[0] == 250
            await c.cmd("QUIT")
            await c.close()
        finally:
            gw.srv.close()
        # Read before the session's end could have delivered anything else.
        return len(gw.boxes.listing("alice")), gw.pokes

    assert support.run(main()) == (1, 1)
