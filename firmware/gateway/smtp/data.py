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
from gateway.compat import const, micropython, ptr8, ptr32, read_now, readinto
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
    # The card's sector. A sink write that ends on a sector boundary of its
    # file lets FatFs write the next one's whole sectors straight to the
    # card; a partial sector goes through the one-sector window FatFs shares
    # with the FAT, costing a card write of its own and a FAT sector read
    # and write at each new cluster (the whole ingest made 2.4 times the
    # system calls on the sim's card).
    sector = 512
    # What the sink raised; the session clears it before each DATA, since a
    # write it makes itself (the Received: line) may fail first.
    sink_error = None
    # Where in its file the sink's next byte goes, set before read_data (an
    # argument would cost its state, one heap block a message, a word).
    at = 0

    def has_line(self):
        return self.buf.find(b"\n", self.start, self.end) >= 0

    async def read_data(self, sink, max_size):
        """Feeds the un-stuffed message to sink(memoryview) up to the final
        dot; returns (outcome, un-stuffed size). The writes end on the
        sectors of the sink's file, counted from .at. After the first problem the
        sink is not called again, but the data is still read to its end.
        sink=None reads and discards (outcome SINK).

        One stretch of lines per read, all in this one function: a call
        whose frame needs more than eleven words takes it from the heap
        (and when a cut-up heap has no such block, collects first), and per
        4 KB read the old per-line calls and a coroutine per read cost more,
        in allocations and collections, than the scan. Its own state, one
        heap block for the whole message, is kept as small as it was: what
        is used once a read lives on self."""
        self.size = 0
        self.bol = True  # buf[s] starts a line
        status = OK if sink else SINK
        buf = self.buf
        mv = self.mv
        s = self.start
        end = self.end
        self.most_held = len(buf) >> 1
        while True:
            e = _after_last_lf(buf, s, end)
            if e > s:
                # Whole lines buf[s:e], un-stuffed up to the terminator. The
                # scan stops at every dot line, so it finds both the
                # stuffing and the terminator, which is only a dot line
                # ".\r\n" right after a CRLF. s moves on with the scan; the
                # next output starts there.
                self.lim = s + self.max_line
                if self.bol and mv[s] == _DOT:
                    if mv[s + 1] == _CR and mv[s + 2] == _LF:
                        self.start = s + 3
                        return status, self.size
                    s += 1
                self.bol = e - s >= 2 and mv[e - 2] == _CR
                while True:
                    if status == OK:
                        i = _scan(buf, s, e, self.lim, self.max_line)
                        if i < -1:
                            status = BARE if i == _BARE else LONG
                            continue
                    else:
                        # Refused already: only the terminator matters now. A
                        # dot after a bare LF needs no care, that message is
                        # refused.
                        i = buf.find(b"\r\n.", s, e)
                    n = e if i < 0 else i + 2
                    if status == OK and n > s:
                        if i < 0:
                            # The write ends on a sector of the file; the rest,
                            # whole lines, is held back and read again with the
                            # next read's, never from between a CR and its LF,
                            # and only while the buffer keeps room to read.
                            n = e - ((self.at + self.size + e - s) & (self.sector - 1))
                            if not s + 1 < n < e or end - n > self.most_held:
                                n = e
                            elif mv[n] == _LF:
                                n -= 1
                        self.size += n - s
                        if self.size > max_size:
                            status = TOO_BIG
                        elif not self._give(sink, mv[s:n]):
                            status = SINK
                    if i < 0:
                        break
                    # The dot's line ends inside the region, so i + 4 is in it too.
                    if mv[i + 3] == _CR and mv[i + 4] == _LF:
                        self.start = i + 5
                        return status, self.size
                    s = i + 3
                    self.lim = i + 2 + self.max_line
                if n < e:  # held back (above): all CRLF, so an LF before n ends a line
                    s = n
                    self.bol = mv[n - 1] == _LF
                else:
                    s = e
            # e: where the read's whole lines end (s when it has none).
            if end - e >= self.max_line:
                # A line this long can only be refused: drop what we have of
                # it but its last byte, which may be the CR of a terminator.
                if status == OK:
                    status = LONG
                s = end - 1
                self.bol = False
            # The unread part line to the front; a memoryview copy, no new
            # buffer.
            end -= s
            if s and end:
                mv[:end] = mv[s : s + end]
            s = self.start = 0
            self.end = end
            i = mv[end:]
            n = read_now(self.stream, i)
            if n is None:
                n = await readinto(self.stream, i)
            if not n:
                return EOF, self.size
            end += n
            self.end = end

    @micropython.native
    def _give(self, sink, view):
        # Apart from read_data, whose state (one heap block a message, 224
        # bytes, which a heap cut up by the day's sessions has) would
        # otherwise hold a handler; native, since as bytecode its frame took
        # 160 bytes from the heap at every write.
        try:
            sink(view)
            return True
        except Exception as e:  # noqa: BLE001 - any card error ends the writing, not the session
            self.sink_error = e
            return False


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


@micropython.viper
def _after_last_lf(buf, s: int, e: int) -> int:
    """The index after the last LF in buf[s:e], or s if there is none: where
    a read's whole lines end. bytearray.rfind calls memcmp for every byte it
    passes, and the part line it passes is half a line on average; here four
    bytes go in one test, (x - ones) & ~x & highs being non-zero exactly
    when some byte of x is zero (x: a word XOR four LFs)."""
    b = ptr8(buf)
    base = int(ptr32(buf))
    ones = 0x01010101
    highs = ones << 7
    lfs = ones * 10
    while e > s:
        if (e & 3) == 0:
            a = base + e - 4
            z = base + s
            while a - z >= 0:
                x = int(ptr32(a)[0]) ^ lfs
                if (x - ones) & ~x & highs:
                    break
                a -= 4
            e = a - base + 4
        e -= 1
        if b[e] == 10:
            return e + 1
    return s
