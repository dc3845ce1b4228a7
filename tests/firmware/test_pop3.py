# The POP3 server over real loopback sockets, driven by a small client in the
# same event loop (on both runtimes); poplib and fetchmail are in tests/e2e.
import asyncio

import support
from gateway import pop3
from gateway.compat import ticks_diff, ticks_ms
from gateway.guard import Logins
from gateway.mailbox import Mailboxes
from gateway.policy import Policy
from gateway.spool import Spool

# One process holds the POP3 server (spool, mailbox, pop3 as .mpy), the
# test's client (compiled from source) and several sessions at once. At 128k
# the third session found no room once POP3 learnt the failed-login record,
# the per-address slots and STLS-before-USER (issue 12), and again
# once the mailbox and spool code grew for the scale issue (13).
MICROPYTHON_HEAP = "176k"

CFG = support.config(dict(support.OFFICE, smtp={"allow": ["127.0.0.0/8"]}))  # POP3 takes the LAN listener's allow list

BIG_LINES = 4000
DOTTY = b"Subject: dots\r\nMessage-ID: <d@x>\r\n\r\n.starts with a dot\r\n..two\r\n.\r\nlast line\r\n"


class Client:
    def __init__(self, r, w):
        self.r, self.w = r, w

    async def line(self):
        return (await self.r.readline()).decode().rstrip("\r\n")

    async def cmd(self, text):
        self.w.write(text.encode() + b"\r\n")
        await self.w.drain()
        return await self.line()

    async def multi(self, text):
        """(status line, body bytes un-stuffed) of a multi-line reply."""
        status = await self.cmd(text)
        if not status.startswith("+OK"):
            return status, None
        out = []
        while True:
            raw = await self.r.readline()
            if raw == b".\r\n":
                return status, b"".join(out)
            out.append(raw[1:] if raw[:1] == b"." else raw)

    async def close(self):
        self.w.close()
        await self.w.wait_closed()


async def connect(port):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    c = Client(r, w)
    greeting = await c.line()
    return c, greeting


async def login(port, user="alice", pw="alice-pw"):
    c, _ = await connect(port)
    assert (await c.cmd("USER " + user)).startswith("+OK")
    return c, await c.cmd("PASS " + pw)


async def serve(boxes, max_sessions=8):
    import random

    for _ in range(50):
        port = random.randrange(20000, 60000)
        try:
            return await pop3.serve(CFG, boxes, "127.0.0.1", port, max_sessions), port
        except OSError:
            pass
    raise OSError("no free port")


async def served(boxes, session, max_sessions=8):
    """session(port) against a POP3 listener on boxes, stopped afterwards."""
    srv, port = await serve(boxes, max_sessions)
    try:
        await session(port)
    finally:
        srv.close()



def listed(boxes, user):
    """The ids a POP3 session would list, oldest first."""
    got = boxes.listing(user)
    return [got.uid(i) for i in range(len(got))]

def box_with(*messages):
    root = support.tmpdir()
    policy = Policy(CFG)
    spool = Spool(root + "/spool")
    spool.recover()
    boxes = Mailboxes(root + "/mail", policy)
    ids = []
    for m in messages:
        d = spool.begin("sender@outside.test", [("alice@example.test", "local")])
        for chunk in (m() if callable(m) else (m,)):
            d.write(chunk)
        ids.append(d.commit())
    boxes.deliver_pending(spool)
    return boxes, ids


def test_stat_list_uidl_top_retr_with_dot_stuffing():
    def big():
        yield b"Subject: big\r\n\r\n"
        for i in range(BIG_LINES):
            yield b"%06d %s\r\n" % (i, b"z" * 60)

    boxes, ids = box_with(DOTTY, big)
    got = boxes.listing("alice")
    sizes = [got.size(i) for i in range(len(got))]

    async def session(port):
        c, ok = await login(port)
        assert ok == "+OK alice has 2 messages"
        assert await c.cmd("STAT") == "+OK 2 %d" % sum(sizes)
        assert await c.multi("LIST") == ("+OK", b"1 %d\r\n2 %d\r\n" % (sizes[0], sizes[1]))
        assert await c.cmd("LIST 2") == "+OK 2 %d" % sizes[1]
        assert await c.multi("UIDL") == ("+OK", b"1 %s\r\n2 %s\r\n" % (ids[0].encode(), ids[1].encode()))
        assert await c.cmd("UIDL 1") == "+OK 1 " + ids[0]
        status, body = await c.multi("RETR 1")
        assert status.startswith("+OK")
        assert body == b"Return-Path: <sender@outside.test>\r\n" + DOTTY
        status, body = await c.multi("TOP 1 0")
        assert body == b"Return-Path: <sender@outside.test>\r\nSubject: dots\r\nMessage-ID: <d@x>\r\n\r\n"
        status, body = await c.multi("TOP 1 2")
        assert body.endswith(b"\r\n\r\n.starts with a dot\r\n..two\r\n")
        # 270 KB, more than the whole heap: only streaming can do this.
        assert (await c.cmd("RETR 2")).startswith("+OK")
        assert await c.line() == "Return-Path: <sender@outside.test>"
        assert await c.line() == "Subject: big"
        assert await c.line() == ""
        for i in range(BIG_LINES):
            assert await c.line() == "%06d %s" % (i, "z" * 60)
        assert await c.line() == "."
        assert (await c.cmd("RETR 3")).startswith("-ERR")
        assert (await c.cmd("TOP 1 x")).startswith("-ERR")
        assert await c.cmd("NOOP") == "+OK"
        assert (await c.cmd("QUIT")).startswith("+OK")
        await c.close()

    support.run(served(boxes, session))


def test_dele_takes_effect_only_at_quit():
    boxes, ids = box_with(DOTTY, DOTTY.replace(b"<d@x>", b"<e@x>"), DOTTY.replace(b"<d@x>", b"<f@x>"))

    async def session(port):
        c, _ = await login(port)
        assert (await c.cmd("DELE 1")).startswith("+OK")
        assert (await c.cmd("DELE 1")).startswith("-ERR")
        assert (await c.cmd("RETR 1")).startswith("-ERR")
        assert (await c.cmd("STAT")).startswith("+OK 2 ")
        assert await c.cmd("RSET") == "+OK"
        assert (await c.cmd("STAT")).startswith("+OK 3 ")
        assert (await c.cmd("DELE 2")).startswith("+OK")
        await c.close()  # hang up without QUIT: nothing is deleted
        await asyncio.sleep(0.1)
        c, ok = await login(port)
        assert ok == "+OK alice has 3 messages"
        assert (await c.cmd("DELE 2")).startswith("+OK")
        assert (await c.cmd("DELE 3")).startswith("+OK")
        assert await c.cmd("QUIT") == "+OK 2 messages deleted, bye"
        await c.close()
        c, ok = await login(port)
        assert ok == "+OK alice has 1 messages"
        assert await c.cmd("UIDL 1") == "+OK 1 " + ids[0]
        await c.cmd("QUIT")
        await c.close()

    support.run(served(boxes, session))
    assert listed(boxes, "alice") == ids[:1]


def test_failed_login_is_delayed_and_repeated_failures_hang_up():
    boxes, _ = box_with(DOTTY)

    async def session(port):
        c, _ = await connect(port)
        await c.cmd("USER alice")
        t0 = ticks_ms()
        assert (await c.cmd("PASS wrong")).startswith("-ERR [AUTH]")
        assert ticks_diff(ticks_ms(), t0) >= 280
        await c.cmd("USER nobody")
        assert (await c.cmd("PASS alice-pw")).startswith("-ERR [AUTH]")
        assert (await c.cmd("PASS alice-pw")).startswith("-ERR")  # PASS without USER
        await c.cmd("USER alice")
        assert (await c.cmd("PASS nope")).startswith("-ERR [AUTH]")
        assert await c.r.read(100) == b""  # third failure: closed
        await c.close()
        c, ok = await login(port)  # the right password still works afterwards
        assert ok.startswith("+OK")
        await c.cmd("QUIT")
        await c.close()

    with support.patched(Logins, DELAY=0.3):
        support.run(served(boxes, session))


def test_one_session_per_mailbox():
    boxes, _ = box_with(DOTTY)

    async def session(port):
        first, ok = await login(port)
        assert ok.startswith("+OK")
        second, busy = await login(port)
        assert busy.startswith("-ERR [IN-USE]")
        other, ok = await login(port, "bob", "bob-pw")
        assert ok == "+OK bob has 0 messages"
        await first.cmd("QUIT")
        await first.close()
        await second.cmd("USER alice")
        assert (await second.cmd("PASS alice-pw")).startswith("+OK")
        for c in (second, other):
            await c.cmd("QUIT")
            await c.close()

    support.run(served(boxes, session))


def test_autologout_after_the_idle_timeout():
    boxes, _ = box_with(DOTTY)
    assert pop3.POP3Session.TIMEOUT >= 600  # RFC 1939: at least ten minutes

    async def session(port):
        c, _ = await login(port)
        assert (await c.cmd("DELE 1")).startswith("+OK")
        assert (await c.line()).startswith("-ERR autologout")
        assert await c.r.read(100) == b""
        await c.close()
        c, ok = await login(port)  # the lock was released, nothing deleted
        assert ok == "+OK alice has 1 messages"
        await c.close()

    with support.patched(pop3.POP3Session, TIMEOUT=0.4):
        support.run(served(boxes, session))


def test_extra_connections_get_an_error_not_a_crash():
    boxes, _ = box_with(DOTTY)

    async def session(port):
        a, ga = await connect(port)
        b, gb = await connect(port)
        assert ga.startswith("+OK") and gb.startswith("+OK")
        c, gc = await connect(port)
        assert gc.startswith("-ERR [SYS/TEMP]")
        await c.close()
        await a.cmd("QUIT")
        await a.close()
        await asyncio.sleep(0.1)
        d, gd = await connect(port)
        assert gd.startswith("+OK")
        for x in (b, d):
            await x.cmd("QUIT")
            await x.close()

    support.run(served(boxes, session, 4))  # one address gets half: the third is refused


def test_bad_commands_and_states():
    boxes, _ = box_with(DOTTY)

    async def session(port):
        c, _ = await connect(port)
        assert (await c.cmd("STAT")).startswith("-ERR")
        assert (await c.cmd("FROB")).startswith("-ERR")
        assert (await c.cmd("X" * 600)).startswith("-ERR line too long")
        status, caps = await c.multi("CAPA")
        assert status.startswith("+OK") and b"UIDL\r\n" in caps and b"TOP\r\n" in caps
        assert b"STLS" not in caps  # no certificate configured
        assert (await c.cmd("STLS")).startswith("-ERR")
        await c.cmd("USER alice")
        await c.cmd("PASS alice-pw")
        assert (await c.cmd("USER bob")).startswith("-ERR")
        for _ in range(5):  # five errors so far, the tenth hangs up
            assert (await c.cmd("BOGUS")).startswith("-ERR")
        assert await c.line() == "-ERR too many errors, closing"
        assert await c.r.read(100) == b""
        await c.close()

    support.run(served(boxes, session))


def test_made_up_verbs_cost_no_heap_for_good():
    # MicroPython interns a name looked up with getattr or hasattr, for good:
    # a client sending ever new verbs must not fill the heap.
    support.needs_micropython("gc.mem_alloc")
    import gc

    boxes, _ = box_with(DOTTY)

    async def session(port):
        async def verbs(first, count):
            c, _ = await connect(port)
            for n in range(first, first + count):
                word = "".join(chr(65 + int(d)) for d in "%04d" % n)  # new each time
                assert (await c.cmd(word)) == "-ERR unknown command"
            # Wait for the server to hang up: a session still being torn down
            # when the heap is counted holds 2.6 KB that is not kept (CI
            # counted one, 1 run in 19 on a loaded machine).
            assert (await c.cmd("QUIT")).startswith("+OK")
            assert await c.r.read(100) == b""
            await c.close()

        await verbs(0, 9)  # the first round may grow tables that then stay
        gc.collect()
        before = gc.mem_alloc()
        for k in range(30):
            await verbs(1000 + 9 * k, 9)
        gc.collect()
        assert gc.mem_alloc() - before < 2048, gc.mem_alloc() - before

    support.run(served(boxes, session))


def test_a_login_on_a_cut_up_heap_is_refused_cleanly_and_works_when_retried():
    # Issue 11: in the office day a POP3 login grew its listing message by
    # message on a heap the day's sessions had cut up, and the session
    # failed for want of one 1,152-byte block with 30 KB free. Made at its
    # full size at once as two arrays, the listing then had logins refused
    # by the dozen for want of two 1,000-byte blocks with 15 KB free. It is
    # now made in pages of 256 bytes; a heap without even those gets a
    # clean temporary refusal of the login, and retried, it works.
    support.needs_micropython("gc.mem_free")
    import gc

    count = 250  # its listing: 2,000 bytes
    root = support.tmpdir()
    spool = Spool(root + "/spool")
    spool.recover()
    boxes = Mailboxes(root + "/mail", Policy(CFG), spool)  # one owner: straight into the mailbox
    for i in range(count):
        d = spool.begin("sender@outside.test", [("alice@example.test", "local")])
        d.write(b"Subject: %d\r\n\r\nhello\r\n" % i)
        d.commit()

    async def login(port, hole, none):
        """The reply to PASS on a heap cut into holes of `hole` bytes,
        with no block of `none` bytes."""
        for _ in range(4):  # the last session's task ends, its listing is garbage
            await asyncio.sleep(0)
        c, greeting = await connect(port)
        assert greeting.startswith("+OK")
        cut = support.cut_heap(hole)
        with support.raises(MemoryError):
            bytearray(none)
        assert (await c.cmd("USER alice")).startswith("+OK")
        got = await c.cmd("PASS alice-pw")
        cut.clear()
        gc.collect()
        return c, got

    async def session(port):
        c, got = await login(port, 768, 1000)  # the two arrays would not fit, pages do
        assert got == "+OK alice has %d messages" % count, got
        assert await c.cmd("QUIT") == "+OK 0 messages deleted, bye"
        await c.close()
        c, got = await login(port, 128, 256)  # not even a page
        assert got == "-ERR [SYS/TEMP] the box is busy, log in again later", got
        assert (await c.cmd("USER alice")).startswith("+OK")
        assert await c.cmd("PASS alice-pw") == "+OK alice has %d messages" % count
        assert (await c.cmd("STAT")).startswith("+OK %d " % count)
        assert await c.cmd("QUIT") == "+OK 0 messages deleted, bye"
        await c.close()
        # Less free than the listing and the room every session leaves
        # (guard.short_of says so): refused before the listing is tried.
        from gateway import guard

        asked = []
        c, _ = await connect(port)
        assert (await c.cmd("USER alice")).startswith("+OK")
        with support.patched(guard, short_of=lambda room: asked.append(room) or True):
            got = await c.cmd("PASS alice-pw")
        assert got == "-ERR [SYS/TEMP] the box is busy, log in again later", got
        assert asked == [8 * count + guard.Slots.ROOM], asked
        assert await c.cmd("QUIT") == "+OK bye"
        await c.close()

    support.run(served(boxes, session, max_sessions=2))
