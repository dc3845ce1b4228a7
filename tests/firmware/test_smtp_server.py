# The SMTP session engine over scripted streams: verbs, pipelining, limits,
# bad input, AUTH, and the hand-off to the spool.
import support
from gateway import sasl
from gateway.smtp import server
from gateway.spool import Spool, SpoolFull

# Compiling server.py, data.py and spool.py from source needs well over
# 64 KB; the 64k runs of the receive path are in tests/e2e (.mpy).
MICROPYTHON_HEAP = "192k"


class Accept(server.Handler):
    """Any recipient into "local"; "out@..." into "out"; "no@..." refused."""

    def __init__(self, spool=None, users=None):
        self.spool = spool
        self.users = users
        self.delivered_ids = []

    def ehlo_keywords(self, session):
        return ["AUTH PLAIN LOGIN CRAM-MD5"] if self.users else []

    def auth_password(self, session, user):
        return self.users.get(user)

    def rcpt(self, session, address):
        if address.startswith("no@"):
            return 550, "5.1.1 No such user"
        return "out" if address.startswith("out@") else "local"

    def delivered(self, session, id, queues):
        self.delivered_ids.append(id)


def _session(chunks, handler=None, card=None, **limits):
    """Runs one session; returns (replies as (code, text) list, handler, spool)."""
    card = card or support.Card()
    sp = Spool(card.root + "/spool", lambda: 1796000000)  # the board's clock
    h = handler or Accept(sp)
    if h.spool is None:
        h.spool = sp
    stream = support.ScriptedStream(chunks)
    s = server.SMTPSession(stream, stream, h, "192.0.2.7")
    for k in limits:
        setattr(s, k, limits[k])
    support.run(s.run())
    replies = []  # one (code, text of the last line) per reply
    h.lines = []
    for line in bytes(stream.out).split(b"\r\n")[:-1]:
        h.lines.append(line[4:].decode())
        if line[3:4] != b"-":
            replies.append((int(line[:3]), line[4:].decode()))
    assert stream.closed
    return replies, h, sp, card


def _codes(replies):
    return [c for c, _ in replies]


def test_pipelined_replies_go_out_in_one_write():
    # A write each made a TCP segment each, and Nagle's algorithm held the
    # second back until the client's delayed ACK: 40 ms a pipelined group
    # (23 messages a second from a pipelining client instead of 1,200).
    class Writes(support.ScriptedStream):
        def write(self, data):
            writes.append(bytes(data))

    writes = []
    card = support.Card()
    stream = Writes([b"EHLO pc\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n",
                     b"hi\r\n.\r\nQUIT\r\n"])
    support.run(server.SMTPSession(stream, stream, Accept(Spool(card.root + "/spool", lambda: 1796000000)), "192.0.2.7").run())
    codes = [[int(line[:3]) for line in w.split(b"\r\n")[:-1] if line[3:4] == b" "] for w in writes]
    assert codes == [[220], [250, 250, 250, 250, 354], [250, 221]], writes
    card.unmount()


def test_a_pipelined_transaction_lands_in_the_spool_with_a_received_header():
    script = [
        b"EHLO pc.example.test\r\nMAIL FROM:<a@x.test> SIZE=40 BODY=8BITMIME\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<out@far.test>\r\nDATA\r\n",
        b"Subject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
    ]
    replies, h, sp, card = _session(script)
    codes = _codes(replies)
    assert codes[:1] == [220] and codes[-5:] == [250, 250, 354, 250, 221]
    ehlo = h.lines[1:6]
    assert "PIPELINING" in ehlo and "8BITMIME" in ehlo and "ENHANCEDSTATUSCODES" in ehlo and "SIZE 10240000" in ehlo
    assert not [t for t in ehlo if t.startswith("AUTH")]
    id = h.delivered_ids[0]
    assert sp.ids("local") == [id] and sp.ids("out") == [id]
    body = support.read_body(sp, id)
    # Dated by the board's clock, as the spool stamps the record.
    assert body.startswith(b"Received: from pc.example.test (192.0.2.7)\r\n\tby gateway with ESMTP; "
                           b"Mon, 30 Nov 2026 00:53:20 +0000\r\n")
    assert sp.envelope(id).received == 1796000000
    assert body.endswith(b"\r\nSubject: hi\r\n\r\n.dot\r\n")
    env = sp.envelope(id)
    assert env.mail_from == "a@x.test" and support.rcpts(env) == [("b@x.test", "local"), ("out@far.test", "out")]
    card.unmount()


def test_commands_out_of_order_nested_mail_and_bad_syntax():
    script = [
        b"MAIL FROM:<a@x.test>\r\n",  # before HELO
        b"HELO pc\r\n",
        b"RCPT TO:<b@x.test>\r\n",  # before MAIL
        b"DATA\r\n",  # before MAIL
        b"MAIL FROM:<a@x.test>\r\n",
        b"MAIL FROM:<a@x.test>\r\n",  # nested
        b"DATA\r\n",  # before RCPT
        b"RCPT TO:b@x.test\r\n",  # no brackets: accepted
        b"RCPT TO:<no@x.test>\r\n",
        b"RCPT TO <b@x.test>\r\n",
        b"MAIL FROM:<a@x.test> SIZE=10\r\n",
        b"RSET\r\nMAIL FROM:<a b@x.test>\r\n",
        b"XYZZY\r\nEXPN staff\r\nVRFY bob\r\nNOOP\r\nHELP\r\nEHLO\r\nQUIT\r\n",
    ]
    replies, *_, card = _session(script)
    assert _codes(replies) == [220, 503, 250, 503, 503, 250, 503, 554, 250, 550, 501, 503, 250, 501, 500, 502, 252, 250, 214, 501, 221]
    card.unmount()


def test_size_too_big_at_mail_and_during_data():
    h = Accept()
    h.max_size = 100
    script = [b"EHLO pc\r\nMAIL FROM:<a@x.test> SIZE=101\r\n", b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"]
    script += [b"x" * 70 + b"\r\n"] * 3 + [b".\r\nQUIT\r\n"]
    replies, h, sp, card = _session(script, h)
    assert _codes(replies) == [220, 250, 552, 250, 250, 354, 552, 221]
    assert sp.ids("local") == [] and sp.recover() == (0, 0)
    card.unmount()


def test_overlong_command_and_a_megabyte_without_crlf():
    script = [b"EHLO pc\r\n", b"NOOP " + b"x" * 508 + b"\r\n", b"NOOP " + b"x" * 505 + b"\r\n"]
    script += [b"A" * 4096] * 256 + [b"\r\nQUIT\r\n"]
    replies, *_, card = _session(script)
    assert _codes(replies) == [220, 250, 500, 250, 500, 221]
    card.unmount()


def test_overlong_data_line_bare_lf_and_smuggling_are_refused_and_not_stored():
    head = b"EHLO pc\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
    for body, code in (
        (b"y" * 5555 + b"\r\n", 550),
        (b"a\nb\r\n", 550),
        (b"a\r\n.\nMAIL FROM:<evil@x.test>\r\n", 550),
        (b"a\n.\r\nRCPT TO:<evil@x.test>\r\n", 550),
        (b"a\r.\rDATA\r\n", 550),
    ):
        replies, h, sp, card = _session([head, body, b".\r\nQUIT\r\n"])
        assert _codes(replies)[-3:] == [354, code, 221], body
        assert sp.ids("local") == [] and not h.delivered_ids
        card.unmount()


def test_error_cap_ends_the_session_with_421():
    replies, *_, card = _session([b"BAD\r\n" * 30 + b"QUIT\r\n"], max_errors=5)
    assert _codes(replies) == [220, 500, 500, 500, 500, 500, 421]
    card.unmount()


def test_recipient_limit_and_duplicates():
    rcpts = b"".join(b"RCPT TO:<u%d@x.test>\r\n" % i for i in range(7))
    replies, h, sp, card = _session(
        [b"EHLO pc\r\nMAIL FROM:<>\r\n" + rcpts + b"RCPT TO:<u0@x.test>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n"], max_recipients=5
    )
    assert _codes(replies) == [220, 250, 250] + [250] * 5 + [452, 452, 452, 354, 250, 221]
    env = sp.envelope(h.delivered_ids[0])
    assert env.mail_from == "" and len(support.rcpts(env)) == 5
    card.unmount()


def test_dropped_connection_mid_data_leaves_nothing():
    replies, h, sp, card = _session([b"EHLO pc\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n", b"half a mess"])
    assert _codes(replies) == [220, 250, 250, 250, 354]
    assert sp.ids("local") == [] and sp.recover() == (0, 0)
    card.unmount()


def test_full_card_gives_452_at_mail_and_at_data():
    class Full(Accept):
        def begin(self, session, mail_from, rcpts):
            raise SpoolFull()

    card = support.Card()
    sp = Spool(card.root + "/spool")
    sp.min_free = sp.free_bytes() + 1
    replies, *_ = _session([b"EHLO pc\r\nMAIL FROM:<a@x.test>\r\nQUIT\r\n"], Accept(sp), card)
    assert replies[-2][0] == 452 and replies[-2][1].startswith("4.3.1")
    replies, *_ = _session([b"EHLO pc\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\nQUIT\r\n"], Full(), card)
    assert _codes(replies) == [220, 250, 250, 250, 452, 221]
    card.unmount()


def test_card_full_at_the_received_line_gives_452_and_no_message():
    # The session's own first write (the Received: line) can be the one
    # that meets the full card: that error must reach the reply.
    class FullDraft:
        def write(self, mv):
            raise SpoolFull("card full while receiving")

        def abort(self):
            pass

    class FullAtFirstWrite(Accept):
        def begin(self, session, mail_from, rcpts):
            return FullDraft()

        def now(self):  # no spool, so no clock of its own
            return 0

    replies, h, *_ = _session([b"EHLO pc\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n"],
                              FullAtFirstWrite())
    assert _codes(replies) == [220, 250, 250, 250, 354, 452, 221]
    assert replies[-2][1].startswith("4.3.1") and h.delivered_ids == []


def test_idle_client_gets_421_after_the_command_timeout():
    class Silent(support.ScriptedStream):
        async def readinto(self, buf):
            import asyncio

            if not self.chunks:
                await asyncio.sleep(10)
            return await support.ScriptedStream.readinto(self, buf)

    card = support.Card()
    stream = Silent([b"EHLO pc\r\n"])
    s = server.SMTPSession(stream, stream, Accept(Spool(card.root + "/spool")))
    s.command_timeout = 0.2
    support.run(s.run())
    assert bytes(stream.out).endswith(b"421 4.4.2 gateway Timeout, closing connection\r\n") and stream.closed
    card.unmount()


def _auth_session(lines):
    users = {"anna": "s3cret"}
    h = Accept(users=users)
    return _session([b"EHLO pc\r\n" + b"".join(l + b"\r\n" for l in lines) + b"QUIT\r\n"], h)


def test_auth_plain_login_and_cram_md5():
    plain = b"AUTH PLAIN " + sasl.plain_response("anna", "s3cret")
    replies, *_, card = _auth_session([plain])
    assert _codes(replies)[-2:] == [235, 221]
    card.unmount()
    replies, *_, card = _auth_session([b"AUTH LOGIN", sasl.b64encode(b"anna"), sasl.b64encode(b"wrong")])
    assert _codes(replies)[-4:] == [334, 334, 535, 221]
    card.unmount()
    replies, *_, card = _auth_session([b"AUTH PLAIN", b"!!notbase64", b"AUTH PLAIN", b"*"])
    assert _codes(replies)[-5:] == [334, 501, 334, 501, 221]
    card.unmount()


def test_auth_cram_md5_against_the_issued_challenge():
    import asyncio

    from gateway import wire

    card = support.Card()
    sp = Spool(card.root + "/spool")

    async def main():
        server_side = _Pipe()
        client_side = _Pipe()
        s = server.SMTPSession(client_side, server_side, Accept(sp, {"anna": "s3cret"}))
        task = asyncio.create_task(s.run())
        r = wire.LineReader(server_side)
        assert (await wire.read_reply(r))[0] == 220
        client_side.feed(b"EHLO pc\r\n")
        code, lines = await wire.read_reply(r)
        assert "AUTH PLAIN LOGIN CRAM-MD5" in lines
        client_side.feed(b"AUTH CRAM-MD5\r\n")
        code, lines = await wire.read_reply(r)
        assert code == 334
        client_side.feed(sasl.cram_md5_response("anna", "s3cret", lines[0].encode()) + b"\r\n")
        code, _ = await wire.read_reply(r)
        client_side.feed(b"QUIT\r\n")
        await task
        return code, s.user

    assert support.run(main()) == (235, "anna")
    card.unmount()


class _Pipe:
    """One direction of a conversation: write() on one side, readinto() on the other."""

    def __init__(self):
        import asyncio

        self.data = bytearray()
        self.event = asyncio.Event()
        self.closed = False

    def feed(self, b):
        self.data += b
        self.event.set()

    write = feed

    async def drain(self):
        pass

    async def readinto(self, buf):
        while not self.data and not self.closed:
            self.event.clear()
            await self.event.wait()
        n = min(len(buf), len(self.data))
        buf[:n] = self.data[:n]
        self.data = self.data[n:]
        return n

    async def read(self, n):
        buf = bytearray(n)
        k = await self.readinto(buf)
        return bytes(buf[:k])

    def close(self):
        self.closed = True
        self.event.set()

    async def wait_closed(self):
        pass


def test_auth_is_refused_when_the_handler_does_not_offer_it():
    replies, *_, card = _session([b"EHLO pc\r\nAUTH PLAIN " + sasl.plain_response("anna", "x") + b"\r\nQUIT\r\n"])
    assert _codes(replies)[-2:] == [503, 221]
    card.unmount()


def test_connect_refusal_closes_at_once():
    class No(Accept):
        def connect(self, session):
            return 554, "5.7.1 Not from your network"

    replies, *_, card = _session([b"EHLO pc\r\n"], No())
    assert replies == [(554, "5.7.1 Not from your network")]
    card.unmount()


def test_serve_caps_sessions_with_421():
    import asyncio

    from gateway import wire

    card = support.Card()
    sp = Spool(card.root + "/spool")

    async def main():
        for _ in range(20):
            port = 20000 + __import__("random").getrandbits(14) * 2
            try:
                srv = await server.serve(lambda: Accept(sp), "127.0.0.1", port, max_sessions=1)
                break
            except OSError:
                pass
        try:
            r1, w1 = await asyncio.open_connection("127.0.0.1", port)
            first = await wire.read_reply(wire.LineReader(r1))
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            second = await wire.read_reply(wire.LineReader(r2))
            w1.write(b"QUIT\r\n")
            await w1.drain()
            w1.close()
            w2.close()
        finally:
            srv.close()
            await srv.wait_closed()
        return first[0], second

    first, second = support.run(main())
    assert first == 220 and second == (421, ["4.3.2 Too many connections, try later"])
    card.unmount()


class _Trickle(support.ScriptedStream):
    """A slow client: one byte per read, `pause` seconds apart."""

    def __init__(self, data, pause):
        support.ScriptedStream.__init__(self, [data[i : i + 1] for i in range(len(data))])
        self.pause = pause

    async def readinto(self, buf):
        import asyncio

        await asyncio.sleep(self.pause)
        return await support.ScriptedStream.readinto(self, buf)


def test_slow_clients_are_cut_off_per_command_and_per_data_phase():
    card = support.Card()
    sp = Spool(card.root + "/spool")
    # A command trickled slower than the command timeout allows.
    stream = _Trickle(b"EHLO a-very-slow-client.example\r\n", 0.02)
    s = server.SMTPSession(stream, stream, Accept(sp))
    s.command_timeout = 0.3
    support.run(s.run())
    assert bytes(stream.out).endswith(b"421 4.4.2 gateway Timeout, closing connection\r\n") and stream.closed
    # Commands in time, then a DATA phase longer than its whole allowance.
    head = b"HELO pc\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
    stream = _Trickle(head + b"x" * 200 + b"\r\n.\r\n", 0.002)
    s = server.SMTPSession(stream, stream, Accept(sp))
    s.data_timeout = 0.2
    support.run(s.run())
    out = bytes(stream.out)
    assert b"354 " in out and out.endswith(b"421 4.4.2 gateway Timeout during DATA, closing connection\r\n")
    assert sp.ids("local") == [] and sp.recover() == (0, 0)
    card.unmount()


def test_pipelined_flood_gets_its_replies_in_bounded_batches():
    class Counting(support.ScriptedStream):
        writes = oks = 0

        def write(self, data):
            self.writes += 1
            self.oks += bytes(data).count(b"250 2.0.0 OK\r\n")

    card = support.Card()
    stream = Counting([b"NOOP\r\n" * 600 + b"QUIT\r\n"])
    s = server.SMTPSession(stream, stream, Accept(Spool(card.root + "/spool")))
    support.run(s.run())
    assert stream.oks == 600
    assert stream.writes >= 600 // s.max_pending_replies
    card.unmount()


def test_made_up_verbs_and_odd_addresses_cost_no_heap_for_good():
    """MicroPython interns a string passed to getattr, and every character
    taken out of a str one by one, as a qstr that is never freed. A client
    sending ever new verbs or address characters must not fill the heap."""
    support.needs_micropython("gc.mem_alloc")
    import gc

    card = support.Card()

    def sessions(first, count):
        for n in range(first, first + count):
            verb = bytes(65 + int(c) for c in b"%d" % n)  # XYZZY-like, new each time
            cp = 0x100 + n  # a new character each time, in UTF-8 (chr() would intern it here)
            addr = b"<a" + bytes((0xC0 | cp >> 6, 0x80 | cp & 0x3F)) + b"@x.test>"
            _session([b"EHLO a\r\nX" + verb + b"\r\nMAIL FROM:" + addr + b"\r\nRCPT TO:" + addr + b"\r\nQUIT\r\n"], card=card)

    sessions(0, 20)  # the first round may grow tables that then stay
    gc.collect()
    before = gc.mem_alloc()
    sessions(1000, 300)
    gc.collect()
    assert gc.mem_alloc() - before < 2048, gc.mem_alloc() - before


class _Preallocated:
    """A scripted stream for a cut-up heap: the script is read by position
    out of one block, what is written goes into a block made beforehand."""

    def __init__(self, script, room):
        self.script = memoryview(script)
        self.pos = 0
        self.out = bytearray(room)
        self.n = 0
        self.closed = False
        self.out_buf = b""

    async def readinto(self, buf):
        n = min(len(buf), len(self.script) - self.pos)
        buf[:n] = self.script[self.pos : self.pos + n]
        self.pos += n
        return n

    def write(self, data):
        self.out[self.n : self.n + len(data)] = data
        self.n += len(data)

    async def drain(self):
        pass

    def close(self):
        self.closed = True

    async def wait_closed(self):
        pass


def test_100_pipelined_recipients_on_a_cut_up_heap():
    # Issue 11: at 160k the office day's pull failed at the message to 100
    # recipients with 30 KB free: the transaction's list of recipients
    # took a 512-byte block at the 65th RCPT, and the 16 replies held back
    # for pipelining were joined into one 570-byte block. Neither block
    # exists in a heap cut up by the day's sessions; the table is now made
    # with the session, and the replies go out one by one.
    card = support.Card()
    sp = Spool(card.root + "/spool", lambda: 1796000000)
    sp.recover()  # the spool's reading side loaded, as on a box that has run a while
    h = Accept(sp)
    many = b"".join(b"RCPT TO:<staff%d@example.test>\r\n" % i for i in range(100))
    refused = b"RCPT TO:<no@x.test>\r\n" * 16  # 16 replies of 24 bytes wait together
    script = b"EHLO pc\r\nMAIL FROM:<a@x.test>\r\n" + refused + many + b"DATA\r\nSubject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n"
    stream = _Preallocated(script, 4096)
    s = server.SMTPSession(stream, stream, h, "192.0.2.7")
    cut = support.cut_heap(64 * support.WORD)  # 256 bytes on the ESP32: the old list needed 512
    with support.raises(MemoryError):
        bytearray(96 * support.WORD)
    support.run(s.run())
    cut = None
    codes = [int(line[:3]) for line in bytes(stream.out[: stream.n]).split(b"\r\n")[:-1] if line[3:4] != b"-"]
    assert codes == [220, 250, 250] + [550] * 16 + [250] * 100 + [354, 250, 221], codes
    env = sp.envelope(h.delivered_ids[0])
    assert sorted(a for a, _ in support.rcpts(env)) == sorted("staff%d@example.test" % i for i in range(100))
    card.unmount()


class _ReadFails(support.ScriptedStream):
    """A stream whose read raises where the script holds an exception, as a
    MemoryError inside the DATA loop would."""

    async def readinto(self, buf):
        if self.chunks and isinstance(self.chunks[0], Exception):
            raise self.chunks.pop(0)
        return await super().readinto(buf)

    async def read(self, n):
        if self.chunks and isinstance(self.chunks[0], Exception):
            raise self.chunks.pop(0)
        return await super().read(n)


def test_a_read_failing_mid_data_closes_with_421_not_the_rest_read_as_commands():
    card = support.Card()
    sp = Spool(card.root + "/spool", lambda: 1796000000)
    h = Accept(sp)
    stream = _ReadFails([b"EHLO pc.example.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n",
                         b"Subject: hi\r\n\r\nfirst part\r\n", MemoryError("memory allocation failed"),
                         b"NOOP is text here\r\nQUIT in the body\r\n.\r\nQUIT\r\n"])
    support.run(server.SMTPSession(stream, stream, h, "192.0.2.7").run())
    codes = [int(line[:3]) for line in bytes(stream.out).split(b"\r\n")[:-1] if line[3:4] != b"-"]
    assert codes[-2:] == [354, 421] and 500 not in codes and stream.closed
    assert sp.ids("local") == [] and h.delivered_ids == []
