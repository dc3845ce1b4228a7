# The DATA phase of an SMTP session, streamed: dot-unstuffing, the strict
# <CRLF>.<CRLF> terminator, and the checks against SMTP smuggling
# (CVE-2023-51764 family), all done in one pass of native (viper) code per
# stretch of lines, never byte by byte in the interpreter.
#
# The reader's buffer only ever hands complete lines to the parser: the
# partial line at its end is carried over to the next read. So every region
# examined starts at a line start and ends with LF, and a line never straddles
# two regions. A bare CR or bare LF anywhere makes the message invalid; it is
# then read on to the real terminator and refused, never stored, and never
# split: only the five bytes CR LF . CR LF end the data.
from gateway.compat import const, micropython, ptr8, ptr32
from gateway.wire import LineReader

_CR = const(13)
_LF = const(10)
_DOT = const(46)
# What _scan returns for a refused message.
_BARE = const(-2)
_LONG = const(-3)

# Outcomes of read_data().
OK = const(0)
TOO_BIG = const(1)  # more than max_size bytes
BARE = const(2)  # a bare CR or LF
LONG = const(3)  # a line over max_line bytes
SINK = const(4)  # the sink raised (card full, card error): see .sink_error
EOF = const(5)  # the peer went away before the terminator


class DataReader(LineReader):
    """The session's line reader, plus the DATA phase read from the same
    buffer, so nothing the peer pipelined after the final dot is lost.
    A server lends the buffer (it keeps them for reuse, so a long running box
    needs no fresh contiguous block per connection). It must be a whole
    bytearray, never a memoryview slice: _scan's word loads count on its
    heap-aligned start, and the ESP32 faults on unaligned ones."""

    max_line = 1000  # RFC 5321 4.5.3.1.6, including CRLF
    # What the sink raised; the session clears it before each DATA, since a
    # write it makes itself (the Received: line) may fail first.
    sink_error = None

    def has_line(self):
        return self.buf.find(b"\n", self.start, self.end) >= 0

    async def read_data(self, sink, max_size):
        """Feeds the un-stuffed message to sink(memoryview) up to the final
        dot; returns (outcome, un-stuffed size). After the first problem the
        sink is not called again, but the data is still read to its end.
        sink=None reads and discards (outcome SINK)."""
        self.sink = sink
        self.status = OK if sink else SINK
        self.size = 0
        self.max_size = max_size
        buf = self.buf
        bol = True  # the region starts right after a CRLF
        while True:
            s = self.start
            end = self.end
            e = buf.rfind(b"\n", s, end) + 1
            if e > s:
                t = self._region(s, e, bol)
                if t >= 0:
                    self.start = t
                    return self.status, self.size
                bol = e - s >= 2 and buf[e - 2] == _CR
                s = e
            if end - s >= self.max_line:
                # A line this long can only be refused: drop what we have of
                # it but its last byte, which may be the CR of a terminator.
                if self.status == OK:
                    self.status = LONG
                s = end - 1
                bol = False
            self.start = s
            if not await self._fill():
                return EOF, self.size

    def _region(self, s, e, bol):
        """Whole lines buf[s:e] (ending in LF): un-stuffs them to the sink up
        to the terminator. Returns the index just past the terminator, or -1.
        The scan stops at every dot line, so it finds both the stuffing and
        the terminator, which is only a dot line ".\r\n" right after a CRLF.
        Each stretch is checked before it is written."""
        buf = self.buf
        seg = s
        if bol and buf[s] == _DOT:
            if buf[s + 1] == _CR and buf[s + 2] == _LF:
                return s + 3
            seg = s + 1
        p = s
        lim = s + self.max_line
        while True:
            if self.status == OK:
                i = _scan(buf, p, e, lim, self.max_line)
                if i < -1:
                    self.status = BARE if i == _BARE else LONG
                    continue
            else:
                # Refused already: only the terminator matters now. A dot
                # after a bare LF needs no care, that message is refused.
                i = buf.find(b"\r\n.", p, e)
            if i < 0:
                break
            self._out(seg, i + 2)
            # The dot's line ends inside the region, so i + 4 is in it too.
            if buf[i + 3] == _CR and buf[i + 4] == _LF:
                return i + 5
            seg = p = i + 3
            lim = i + 2 + self.max_line
        self._out(seg, e)
        return -1

    def _out(self, a, b):
        if b <= a or self.status != OK:
            return
        self.size += b - a
        if self.size > self.max_size:
            self.status = TOO_BIG
            return
        try:
            self.sink(self.mv[a:b])
        except Exception as e:  # noqa: BLE001 - any card error ends the writing, not the session
            self.sink_error = e
            self.status = SINK


@micropython.viper
def _scan(buf, p: int, e: int, lim: int, max_line: int) -> int:
    """Checks the whole lines buf[p:e] up to the first dot line: the index of
    the CR LF before its dot, or -1 if there is none; _BARE for a bare CR or
    LF, _LONG for a line ending past lim (the first line's limit; the next
    ones get max_line each). Most of a message is the inside of its lines,
    so aligned words with no byte below 14 (CR and LF; a tab or another
    control is rare, and only sends its word to the byte loop) are skipped.
    (x - 0x0e0e0e0e) & ~x & 0x80808080 is non-zero exactly when some byte
    of x is below 14; without the & ~x (which also flags bytes from 0x8e)
    four words take one test, so ASCII text goes 16 bytes a turn and only a
    flagged stretch gets the exact test word by word. The words are read
    through an address that moves, not an index: viper's code for w[q]
    scales q with four adds."""
    b = ptr8(buf)
    base = int(ptr32(buf))
    ones = 0x01010101
    highs = ones << 7  # built at run time: 0x80808080 is no small int on a 32-bit port
    lows = ones * 14
    while p < e:
        if (p & 3) == 0:
            # Addresses are compared by their difference: on a 32-bit port
            # they may pass 2**31, where viper's signed int turns over.
            a = base + p
            z = base + e - 16
            while a - z <= 0:
                v = ptr32(a)
                if (int(v[0]) - lows | int(v[1]) - lows | int(v[2]) - lows | int(v[3]) - lows) & highs:
                    break
                a += 16
            z += 12
            while a - z <= 0:
                x = int(ptr32(a)[0])
                if (x - lows) & ~x & highs:
                    break
                a += 4
            p = a - base
            if p >= e:
                break
        c = b[p]
        if c == 13:
            if b[p + 1] != 10:
                return _BARE
            p += 2
            if p > lim:
                return _LONG
            if p < e and b[p] == 46:
                return p - 2
            lim = p + max_line
        elif c == 10:
            return _BARE
        else:
            p += 1
    return -1
