"""Bounded line reading and SMTP reply parsing over asyncio streams, shared by
the ODMR listener (commands) and the delivery client (replies)."""
import asyncio
import re

_REPLY = re.compile(rb"^(\d{3})([ -])(.*?)\r?\n$", re.S)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


class LineTooLong(Exception):
    """The whole overlong line was consumed; the stream is still in step."""


class ProtocolError(Exception):
    pass


class LineReader:
    # An overlong line is discarded up to its LF; past this many bytes without
    # one the peer is not speaking SMTP and the caller hangs up.
    MAX_DISCARD = 1 << 20

    def __init__(self, reader, limit=1000):
        self.reader = reader
        self.limit = limit
        self.buf = bytearray()
        self.eof = False

    def drop_buffer(self):
        """Forget bytes received but not read yet (before STARTTLS: RFC 3207 §4),
        including those the asyncio StreamReader holds (it has no public way
        to discard them, and after the upgrade they would read as if sent
        inside TLS)."""
        self.buf.clear()
        self.reader._buffer.clear()

    async def readline(self):
        """One line including its LF; b"" at EOF (a final line without LF is returned as is)."""
        discarded = 0
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[: nl + 1])
                del self.buf[: nl + 1]
                if discarded or len(line) > self.limit:
                    raise LineTooLong()
                return line
            if len(self.buf) > self.limit:
                discarded += len(self.buf)
                self.buf.clear()
                if discarded > self.MAX_DISCARD:
                    raise ProtocolError("no line end in 1 MiB")
            if self.eof:
                line = bytes(self.buf)
                self.buf.clear()
                if discarded:
                    raise LineTooLong()
                return line
            chunk = await self.reader.read(65536)
            if not chunk:
                self.eof = True
            self.buf += chunk


class Reply:
    def __init__(self, code, lines):
        self.code = code
        self.lines = lines

    @property
    def text(self):
        return " ".join(self.lines)

    def status(self):
        """The enhanced status code (RFC 3463) from the text, or one made from the code class."""
        m = _ENHANCED.match(self.lines[0] if self.lines else "")
        return m.group(0) if m else f"{self.code // 100}.0.0"

    def __str__(self):
        return f"{self.code} {self.text}"


async def read_reply(lines, timeout):
    """A (multi-line) reply; EOFError when the peer hangs up, ProtocolError on garbage."""
    code, texts = None, []
    for _ in range(100):
        try:
            async with asyncio.timeout(timeout):  # cancel-safe, unlike 3.11's wait_for
                line = await lines.readline()
        except LineTooLong:
            raise ProtocolError("reply line too long") from None
        if not line:
            raise EOFError("connection closed")
        if not line.endswith(b"\n"):
            raise EOFError("connection closed in the middle of a reply")
        m = _REPLY.match(line) or _REPLY.match(line.rstrip(b"\r\n") + b" \r\n")
        if not m or (code is not None and int(m.group(1)) != code):
            raise ProtocolError(f"not an SMTP reply: {line[:80]!r}")
        code = int(m.group(1))
        # Reply text ends up in logs and DSNs: no control characters from the peer.
        texts.append(_CONTROL.sub(" ", m.group(3).decode("utf-8", "replace")).strip())
        if m.group(2) == b" ":
            return Reply(code, texts)
    raise ProtocolError("reply longer than 100 lines")
