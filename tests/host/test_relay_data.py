"""The relay's DATA reader (smtp_in.MessageText) against the rule it
replaces, aiosmtpd's line by line reading: the same text, the same
refusals, whatever the chunks the bytes arrive in, and not one byte read
past the end mark (the next command stays for the session). The same for
its reading of MAIL and RCPT paths against aiosmtpd's parser. And the
canonical form every queued message gets (CRLF line ends only)."""
import asyncio
import random

import pytest
from aiosmtpd.smtp import SMTP

from host_tools.relay.client import canonical
from host_tools.relay.smtp_in import MessageText, RelaySMTP

LINE_LIMIT = 1001       # aiosmtpd's line_length_limit, which the relay keeps


def line_by_line(raw, size_limit):
    """What aiosmtpd's DATA makes of `raw`: (text, problem, what is left after the end)."""
    lines, rest, size = [], raw, 0
    while True:
        line, sep, rest = rest.partition(b"\r\n")
        if line == b"." and sep:
            break
        lines.append(line)
        size += len(line) + 2
    if any(len(line) + 2 > LINE_LIMIT for line in lines):
        return b"", "500 Line too long (see RFC5321 4.5.3.1.6)", rest
    if size > size_limit:
        return b"", "552 Error: Too much mail data", rest
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines), None, rest


def read(raw, size_limit, pieces):
    async def run():
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        for piece in pieces:
            reader.feed_data(piece)
        reader.feed_eof()
        text = await MessageText(reader, size_limit, LINE_LIMIT).read()
        return text.data, text.problem, await reader.read()

    return asyncio.run(run())


def cut(raw, rng):
    """`raw` in random pieces, some of one byte (a CR apart from its LF, a lone dot)."""
    out, i = [], 0
    while i < len(raw):
        n = rng.choice([1, 2, 3, 5, 64, 700, 4096])
        out.append(raw[i:i + n])
        i += n
    return out


CASES = {
    "empty message": b".\r\n",
    "one line": b"Subject: x\r\n.\r\n",
    "dot-stuffed first lines": b"..one\r\n..\r\n.two\r\nthree\r\n.\r\n",
    "empty first lines": b"\r\n\r\nbody\r\n.\r\n",
    "a bare CR first": b"\rodd\r\nbody\r\n.\r\n",
    "dots inside": b"Subject: x\r\n\r\n..a\r\nb.\r\n...\r\n. \r\nend\r\n.\r\n",
    "a bare LF is not a line end": b"a\nb\r\n.\nc\r\n.\r\n",
    "a dot line with a CR before its CRLF": b"x\r\n.\r\r\ny\r\n.\r\n",
    "the longest line allowed": b"h\r\n" + b"x" * 999 + b"\r\n.\r\n",
    "a line one octet too long": b"h\r\n" + b"x" * 1000 + b"\r\n.\r\n",
    "an overlong first line": b"y" * 5000 + b"\r\nrest\r\n.\r\n",
    "an overlong dot-stuffed first line": b"." + b"y" * 5000 + b"\r\n.\r\n",
    "an overlong line across chunks": b"a\r\n" + b"z" * 70000 + b"\r\n.\r\n",
    "a 10 KB message": b"Subject: big\r\n\r\n" + b"0123456789abcdefghijklmnopqrstuvwxyz0123456789\r\n" * 220 + b".\r\n",
}


@pytest.mark.parametrize("name", CASES)
def test_the_text_is_what_line_by_line_reading_gives_in_any_chunks(name):
    rng = random.Random(name)
    raw = CASES[name] + b"QUIT\r\n"         # the next command must stay unread
    want = line_by_line(raw, 1 << 20)
    assert read(raw, 1 << 20, [raw]) == want
    for _ in range(30):
        assert read(raw, 1 << 20, cut(raw, rng)) == want


def test_a_message_over_the_size_limit_is_read_to_its_end_and_refused():
    raw = b"Subject: x\r\n\r\n" + b"y" * 500 + b"\r\n.\r\nQUIT\r\n"
    assert read(raw, 400, cut(raw, random.Random(1))) == (b"", "552 Error: Too much mail data", b"QUIT\r\n")
    assert read(raw, 600, [raw])[1] is None


@pytest.mark.parametrize("raw, want", [
    (b"a\r\nb\r\n", b"a\r\nb\r\n"),
    (b"a\nb\r\n", b"a\r\nb\r\n"),           # a bare LF
    (b"a\rb\r\n", b"a\r\nb\r\n"),           # a bare CR
    (b"a\r\r\nb\n\r\n", b"a\r\n\r\nb\r\n\r\n"),
    (b"a\r\nb", b"a\r\nb\r\n"),             # no line end at the end
    (b"", b""),
])
def test_canonical_text_has_crlf_line_ends_only(raw, want):
    assert canonical(raw) == want


class _Relay:
    throttle = None


PATHS = ["<a@example.test>", "<a@example.test> SIZE=10240 BODY=8BITMIME", " <x.y+z@sub.example.test>  SIZE=1  ",
         "<a@b>SIZE=1", "<a@b>\tX", "<a@b> (a comment) X", "<a..b@c>", "<.a@c>", "<a@b.>", "<a@[127.0.0.1]>",
         '<"quoted"@b>', "<@route:a@b>", "<>", "", "a@b", "<a@b", "<a@b>)", "<" + "l" * 70 + "@b>", "<Ä@b>"]


def test_paths_read_as_aiosmtpds_parser_reads_them():
    ours, theirs = RelaySMTP(None, _Relay()), SMTP(None)
    rng = random.Random(2645)
    alphabet = "ab.@<> \t()\"[]:,=+-_~" + "\u00e4"
    paths = PATHS + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))) for _ in range(5000)]
    paths += ["<" + "".join(rng.choice("ab.@-+") for _ in range(rng.randint(1, 12))) + ">" + rng.choice(["", " X=1", "  "])
              for _ in range(5000)]
    for path in paths:
        assert outcome(ours._getaddr, path) == outcome(theirs._getaddr, path), path


def outcome(parse, path):
    """What `parse` makes of it; the email package's parser itself raises
    on some nonsense (IndexError, UnboundLocalError: aiosmtpd answers 500)."""
    try:
        return parse(path)
    except Exception as e:
        return type(e)
