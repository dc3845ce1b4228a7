# Line I/O for the text protocols (SMTP both ways, POP3) over asyncio streams.
# Everything goes through one pre-allocated buffer per connection, so a peer
# that sends huge lines or floods us costs no more memory than a polite one.
from gateway.compat import readinto


class LineTooLong(Exception):
    """The peer sent a line longer than the reader's buffer. The whole line has
    been consumed, so the session can answer and carry on."""


class ProtocolError(Exception):
    """A reply we cannot parse; carries a human sentence."""


class SMTPError(Exception):
    """A failed step: .code (the server's, or one we chose for a local
    failure: 421 network, 554 TLS/config, 502 not offered) and .text, a
    sentence for the log and the console."""

    def __init__(self, code, text):
        super().__init__("%d %s" % (code, text))
        self.code = code
        self.text = text

    @property
    def temporary(self):
        return self.code < 500


def reason(e):
    """An exception's arguments as one line of text (may be empty)."""
    text = " ".join(str(a) for a in e.args) if e.args else ""
    return " ".join(text.split())


class LineReader:
    """CRLF lines from a stream, in a fixed buffer.

    Input already buffered is never dropped: a pipelining peer may send many
    commands in one segment, and `pending()` tells the caller whether more are
    waiting before it flushes its replies (RFC 2920).
    """

    def __init__(self, stream, size=1024, buf=None):
        # buf: a bytearray the caller lends (used in full instead of size).
        self.stream = stream
        self.buf = bytearray(size) if buf is None else buf
        self.mv = memoryview(self.buf)
        self.start = 0
        self.end = 0

    def pending(self):
        return self.end > self.start

    async def _fill(self):
        if self.start:
            # Slide the unread tail to the front; memoryview copy, no new object.
            n = self.end - self.start
            self.mv[:n] = self.mv[self.start : self.end]
            self.start, self.end = 0, n
        n = await readinto(self.stream, self.mv[self.end :])
        self.end += n
        return n

    async def readline(self):
        """The next line including its LF, as a memoryview into the buffer that
        stays valid until the next read; empty at end of stream. A line that
        does not fit raises LineTooLong once it has been read to its end."""
        too_long = False
        while True:
            i = self.buf.find(b"\n", self.start, self.end)
            if i >= 0:
                line = self.mv[self.start : i + 1]
                self.start = i + 1
                if too_long:
                    raise LineTooLong()
                return line
            if self.end - self.start == len(self.buf):
                # Full buffer and no LF yet: discard it and keep looking.
                too_long = True
                self.start = self.end = 0
            if not await self._fill():
                if too_long:
                    raise LineTooLong()
                line = self.mv[self.start : self.end]
                self.start = self.end
                return line

    async def readinto(self, mv):
        """Raw bytes: first what is buffered, then straight from the stream."""
        n = self.end - self.start
        if n:
            n = min(n, len(mv))
            mv[:n] = self.mv[self.start : self.start + n]
            self.start += n
            return n
        return await readinto(self.stream, mv)


async def server_tls(lines, writer, ctx, what):
    """The server side of STARTTLS (POP3's STLS, IMAP's STARTTLS) once the
    go-ahead is sent: True when the handshake is done. Input buffered
    before it is discarded (RFC 2595, RFC 3501 6.2.1): it came in clear."""
    from gateway import log
    from gateway.compat import start_tls

    try:
        await start_tls(lines.stream, writer, ctx)
    except OSError as e:
        log.warn("%s: TLS handshake failed: %s" % (what, e))
        return False
    lines.start = lines.end = 0
    return True


async def read_reply(reader):
    """One SMTP reply, single or multi-line, as (code, [text lines]).
    Raises ProtocolError on a malformed reply and EOFError on a closed line."""
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise EOFError("connection closed while waiting for a reply")
        text = bytes(line).rstrip(b"\r\n")
        if len(text) < 3 or not text[:3].isdigit() or (len(text) > 3 and text[3:4] not in b" -"):
            raise ProtocolError("malformed reply line: %r" % text[:80])
        code = int(text[:3])
        if lines and code != lines[0][0]:
            raise ProtocolError("reply code changed inside a multi-line reply")
        lines.append((code, text[4:].decode("utf-8", "replace")))
        if text[3:4] != b"-":
            return code, [t for _, t in lines]


def format_reply(code, lines):
    """The bytes of an SMTP reply; several lines become a multi-line reply."""
    if isinstance(lines, str):  # one line, formatted without a generator
        return b"%d %s\r\n" % (code, lines.encode())
    last = len(lines) - 1
    return b"".join(b"%d%s%s\r\n" % (code, b" " if i == last else b"-", t.encode()) for i, t in enumerate(lines))
