import support
from gateway import wire


def _lines(chunks, size=64):
    async def main():
        r = wire.LineReader(support.ScriptedStream(chunks), size)
        out = []
        while True:
            try:
                line = await r.readline()
            except wire.LineTooLong:
                out.append("TOO LONG")
                continue
            if not line:
                return out
            out.append(bytes(line))

    return support.run(main())


def test_lines_split_across_reads_and_pipelined_in_one_read():
    got = _lines([b"EH", b"LO a\r\nMAIL FROM:<x>\r\nRCPT TO:<y>\r", b"\nDATA\r\n"])
    assert got == [b"EHLO a\r\n", b"MAIL FROM:<x>\r\n", b"RCPT TO:<y>\r\n", b"DATA\r\n"]


def test_overlong_line_is_consumed_and_reported_once_then_reading_goes_on():
    got = _lines([b"X" * 200 + b"\r\nNOOP\r\n"], size=64)
    assert got == ["TOO LONG", b"NOOP\r\n"]


def test_a_megabyte_without_a_newline_costs_no_memory_and_ends_in_eof():
    got = _lines([b"A" * 4096] * 256, size=64)
    assert got == ["TOO LONG"]


def test_partial_last_line_is_returned_at_eof():
    assert _lines([b"QUIT"]) == [b"QUIT"]


def test_readinto_drains_the_buffer_before_the_stream():
    async def main():
        r = wire.LineReader(support.ScriptedStream([b"DATA\r\nbody", b"more"]), 64)
        assert bytes(await r.readline()) == b"DATA\r\n"
        buf = bytearray(16)
        n1 = await r.readinto(memoryview(buf))
        first = bytes(buf[:n1])
        n2 = await r.readinto(memoryview(buf))
        return first, bytes(buf[:n2])

    assert support.run(main()) == (b"body", b"more")


def test_multiline_reply_split_across_reads():
    async def main():
        r = wire.LineReader(support.ScriptedStream([b"250-relay.test hi\r\n250-AU", b"TH CRAM-MD5\r\n250 ATRN\r\n"]))
        return await wire.read_reply(r)

    assert support.run(main()) == (250, ["relay.test hi", "AUTH CRAM-MD5", "ATRN"])


def test_malformed_reply_and_eof_are_errors():
    async def one(chunks):
        return await wire.read_reply(wire.LineReader(support.ScriptedStream(chunks)))

    with support.raises(wire.ProtocolError):
        support.run(one([b"hello\r\n"]))
    with support.raises(wire.ProtocolError):
        support.run(one([b"250-a\r\n451 b\r\n"]))
    with support.raises(EOFError):
        support.run(one([b"250-a\r\n"]))


def test_format_reply():
    assert wire.format_reply(250, "OK") == b"250 OK\r\n"
    assert wire.format_reply(250, ["a", "b"]) == b"250-a\r\n250 b\r\n"
