# The mail spool on the SD card: every message the receiver accepted that
# still has recipients to serve, in the queues "local" (our own mailboxes)
# and "out" (the smarthost).
#
# FAT is not power-loss safe and VfsFat's rename deletes an existing target
# first, so nothing here relies on rename. Each message is ONE write-once file
# <root>/<bucket>/<id>.<queues> that validates itself:
#
#   header   "ODMRGW1 <hlen:6> <id> <received>\n" "F <mail from>\n" "R <q> <rcpt>\n"...
#   body     the un-stuffed message bytes
#   trailer  "END1 <id> <body length:10> <crc32 header:8> <crc32 body:8>\n"
#
# A file whose trailer is missing, or whose lengths or checksums disagree,
# was cut short; recover() removes it and nothing else ever reads it.
# Progress (recipients handled) goes to a separate append-only file <id>.d,
# so a committed message file is never written again. Buckets hold 256 ids,
# which keeps every FAT directory scan short.
import binascii
import os
import time
from errno import ENOENT

from gateway.compat import const, fsync, ilistdir

_MAGIC = b"ODMRGW1"
_TRAILER = const(43)  # len(b"END1 %s %010d %08x %08x\n") with an 8-digit id
_RESERVE = const(64)  # ids reserved per write of the seq file
_SLOT = const(512)  # one seq slot per sector: a torn write spoils only one
_QUEUES = ("local", "out")
_LETTERS = "lo"  # a file's extension: the letters of its queues, in this order


class SpoolFull(Exception):
    """Not enough room on the card: the receiver answers 452 4.3.1."""


def _exists(path):
    try:
        return os.stat(path)
    except OSError:
        return None


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _done_line(i):
    return b"%04d %08x\n" % (i, binascii.crc32(b"%d" % i))


class Envelope:
    """.id .mail_from .rcpts [(address, queue)] .size .received (unix s)."""

    def __init__(self, path):
        """Parses a record's header; .rcpts are all of them, .done the indices
        already handled. Raises ValueError/OSError on a damaged header."""
        with open(path, "rb") as f:
            line = f.readline()
            if line[:8] != _MAGIC + b" ":
                raise ValueError("not a spool record")
            _, hlen, id, received = line.split()
            self.hlen = int(hlen)
            self.id = id.decode()
            self.received = int(received)
            got = len(line)
            self.rcpts = []
            while got < self.hlen:
                line = f.readline()
                got += len(line)
                if line[-1:] != b"\n" or line[1:2] != b" ":
                    raise ValueError("bad header line")
                if line[:1] == b"F":
                    self.mail_from = line[2:-1].decode()
                else:
                    self.rcpts.append((line[4:-1].decode(), _QUEUES[_LETTERS.index(chr(line[2]))]))
        if got != self.hlen or not self.rcpts:
            raise ValueError("bad header length")
        self.size = os.stat(path)[6] - self.hlen - _TRAILER
        self.done = set()
        try:
            f = open(path[: path.rfind(".") + 1] + "d", "rb")
        except OSError:
            return
        # A torn last line fails its check and is ignored: that recipient is
        # served again (a duplicate, never a loss).
        with f:
            for line in f:
                if len(line) == 14 and line[:4].isdigit() and line == _done_line(int(line[:4])):
                    self.done.add(int(line[:4]))

    def pending(self, queue=None):
        return [r for i, r in enumerate(self.rcpts) if i not in self.done and (queue is None or r[1] == queue)]


class Body:
    """Exactly the message bytes of a committed record."""

    def __init__(self, path, start, size):
        self._f = open(path, "rb")
        self._f.seek(start)
        self.left = size

    def readinto(self, buf):
        n = min(len(buf), self.left)
        if n > 0:
            n = self._f.readinto(memoryview(buf)[:n])
            self.left -= n
        return n

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Draft:
    """A message being received. Nothing of it is visible until commit()."""

    def __init__(self, spool, id, path, header):
        self.spool = spool
        self.id = id
        self.path = path
        self.size = 0
        self.hcrc = binascii.crc32(header)
        self.crc = 0
        self._check_at = spool.check_every
        self._f = open(path, "wb")
        try:
            self._f.write(header)
        except OSError:
            self.abort()
            raise

    def write(self, buf):
        self._f.write(buf)
        self.crc = binascii.crc32(buf, self.crc)
        self.size += len(buf)
        if self.size >= self._check_at:
            self._check_at = self.size + self.spool.check_every
            if self.spool.free_bytes() < self.spool.min_free:
                raise SpoolFull("card full while receiving")

    def commit(self):
        """The trailer, then FatFs f_sync: data, FAT and directory entry are
        on the card before this returns (and so before the 250)."""
        self._f.write(b"END1 %s %010d %08x %08x\n" % (self.id.encode(), self.size, self.hcrc, self.crc))
        fsync(self._f)
        self._f.close()
        self._f = None
        self.spool._drafts.discard(self.id)
        return self.id

    def abort(self):
        if self._f:
            try:
                self._f.close()
            except OSError:
                pass
            self._f = None
            _remove(self.path)
        self.spool._drafts.discard(self.id)


class Spool:
    min_free = 256 * 1024  # below this the receiver answers 452 4.3.1
    size_factor = 1.5  # MAIL with SIZE=n needs n * this free (Postfix's rule)
    check_every = 64 * 1024  # re-check free space every so many body bytes
    verify = True  # recover() checks body checksums, not only the trailers

    def __init__(self, root, clock=None):
        self.root = root
        self.clock = clock or time.time
        self._next = None  # the next id to hand out
        self._limit = 0  # ids below this are reserved in the seq file
        self._slot = 0
        self._drafts = set()

    # --- ids: 8 hex digits from a counter, so sortable and never reused ------
    def _new_id(self):
        if self._next is None:
            if not _exists(self.root):
                os.mkdir(self.root)
            self._next = max(self._seq(None), self._highest() + 1)
        if self._next >= self._limit:
            self._seq(self._next + _RESERVE)
        self._next += 1
        return "%08x" % (self._next - 1)

    def _seq(self, v):
        """Reads (v=None) or raises the reservation in the seq file: two
        slots in two sectors, written in turn, so a torn write leaves the
        other, older reservation readable."""
        path = self.root + "/seq"
        if v is None:
            best = 1
            try:
                f = open(path, "rb")
            except OSError:
                return best
            with f:
                for k in (0, 1):
                    f.seek(k * _SLOT)
                    line = f.readline()
                    try:
                        n = int(line[4:12], 16)
                    except ValueError:
                        continue
                    if line == b"SEQ %08x %08x\n" % (n, binascii.crc32(line[4:12])) and n > best:
                        best, self._slot = n, 1 - k
            return best
        if not _exists(path):
            with open(path, "wb") as f:
                # Whatever the gap holds counts only with a valid checksum.
                f.seek(2 * _SLOT - 1)
                f.write(b"\0")
        with open(path, "r+b") as f:
            f.seek(self._slot * _SLOT)
            f.write(b"SEQ %08x %08x\n" % (v, binascii.crc32(b"%08x" % v)))
            fsync(f)
        self._slot = 1 - self._slot
        self._limit = v

    def _highest(self):
        """The largest id on the card, in case the seq file was lost."""
        for b in reversed(self._buckets()):
            bits = self._bits(b, "lo")
            for i in range(255, -1, -1):
                if bits[i >> 3] & 1 << (i & 7):
                    return int(b, 16) << 8 | i
        return 0

    # --- listing ---------------------------------------------------------------
    def _buckets(self):
        try:
            return sorted(e[0] for e in ilistdir(self.root) if e[1] & 0x4000 and len(e[0]) == 6)
        except OSError:
            return []

    def _bits(self, bucket, letters, queue=None):
        """A 256-bit map of the ids in a bucket whose record is in one of
        `letters`' queues (and has `queue` pending): sorting by bit costs no
        list of names, which a bucket of 256 would need on a small heap."""
        bits = bytearray(32)
        for e in ilistdir(self.root + "/" + bucket):
            name = e[0]
            ext = name[9:]
            if ext == "d" or not [c for c in ext if c in letters] or name[:8] in self._drafts:
                continue
            # A single-queue record exists only while something in it is
            # pending; a mixed one needs a look at its progress.
            if queue and len(ext) > 1 and not Envelope("%s/%s/%s" % (self.root, bucket, name)).pending(queue):
                continue
            i = int(name[6:8], 16)
            bits[i >> 3] |= 1 << (i & 7)
        return bits

    def _path(self, id):
        base = "%s/%s/%s." % (self.root, id[:6], id)
        for ext in ("l", "o", "lo"):
            try:
                os.stat(base + ext)
                return base + ext
            except OSError as e:
                if e.args[0] != ENOENT:
                    raise  # a card error is not "no such message"
        raise KeyError(id)

    def ids(self, queue):
        letter = _LETTERS[_QUEUES.index(queue)]
        maps = [(b, self._bits(b, letter, queue)) for b in self._buckets()]
        # Sized once: a list grown id by id would cut up a small heap.
        out = [None] * sum(bin(x).count("1") for _, bits in maps for x in bits)
        n = 0
        for b, bits in maps:
            for i in range(256):
                if bits[i >> 3] & 1 << (i & 7):
                    out[n] = "%s%02x" % (b, i)
                    n += 1
        return out

    def envelope(self, id):
        env = Envelope(self._path(id))
        env.rcpts = env.pending()
        return env

    def open(self, id):
        path = self._path(id)
        env = Envelope(path)
        return Body(path, env.hlen, env.size)

    def counts(self):
        return {q: len(self.ids(q)) for q in _QUEUES}

    def free_bytes(self):
        try:
            st = os.statvfs(self.root)
        except OSError:  # not made yet: the card it will be on
            st = os.statvfs(self.root[: self.root.rfind("/")] or "/")
        return st[0] * st[4]

    # --- writing ---------------------------------------------------------------
    def room(self, size=0):
        """Whether a message of `size` bytes (0 = not declared) may start."""
        return self.free_bytes() >= max(self.min_free, int(size * self.size_factor))

    def begin(self, mail_from, rcpts, size=0):
        if not self.room(size):
            raise SpoolFull("card full")
        lines = [b"F %s\n" % mail_from.encode()]
        ext = ""
        for addr, q in rcpts:
            letter = _LETTERS[_QUEUES.index(q)]
            lines.append(b"R %s %s\n" % (letter.encode(), addr.encode()))
            if letter not in ext:
                ext = "lo" if ext else letter
        if not ext:
            raise ValueError("no recipients")
        id = self._new_id()
        d = "%s/%s" % (self.root, id[:6])
        if not _exists(d):
            os.mkdir(d)
        now = int(self.clock())
        rest = b"".join(lines)
        # Line one has a fixed-width length field, so its own length is known.
        first = b"%s %06d %s %d\n" % (_MAGIC, 0, id.encode(), now)
        header = b"%s %06d %s" % (_MAGIC, len(first) + len(rest), first[15:] + rest)
        self._drafts.add(id)
        try:
            return Draft(self, id, "%s/%s.%s" % (d, id, ext), header)
        except OSError:
            self._drafts.discard(id)
            raise

    def done(self, id, queue, addresses=None):
        try:
            path = self._path(id)
        except KeyError:
            return  # already complete and gone
        env = Envelope(path)
        marks = [
            i
            for i, (addr, q) in enumerate(env.rcpts)
            if q == queue and i not in env.done and (addresses is None or addr in addresses)
        ]
        if not marks:
            return
        dpath = path[: path.rfind(".")] + ".d"
        if len(marks) + len(env.done) == len(env.rcpts):
            # All handled. The message file goes first: a crash here leaves
            # only an orphan progress file, which recover() removes.
            os.remove(path)
            _remove(dpath)
            if self._next is None or id[:6] != ("%08x" % self._next)[:6]:
                try:
                    os.rmdir(path[: path.rfind("/")])
                except OSError:
                    pass  # not empty yet
            return
        with open(dpath, "ab") as f:
            for i in marks:
                f.write(_done_line(i))
            fsync(f)

    # --- boot ------------------------------------------------------------------
    def recover(self):
        """Removes every record that is not a whole committed message, and
        progress files without a message. Returns (kept, removed)."""
        if not _exists(self.root):
            os.mkdir(self.root)
        self._next = None
        kept = removed = 0
        buf = memoryview(bytearray(512))
        for b in self._buckets():
            d = self.root + "/" + b
            # No list of names: a bucket of 256 would not fit a small heap.
            for e in ilistdir(d):
                name = e[0]
                path = d + "/" + name
                if name[9:] == "d":
                    try:
                        self._path(name[:8])
                    except KeyError:
                        _remove(path)  # the progress of a message already gone
                elif self._valid(path, buf):
                    kept += 1
                else:
                    _remove(path)
                    _remove(path[: path.rfind(".")] + ".d")
                    removed += 1
            try:
                os.rmdir(d)
            except OSError:
                pass  # not empty
        return kept, removed

    def _valid(self, path, buf):
        try:
            env = Envelope(path)
            if env.size < 0 or not env.pending():
                return False
            with open(path, "rb") as f:
                hcrc = _crc(f, buf, env.hlen)
                crc = None
                if self.verify:
                    crc = _crc(f, buf, env.size)
                else:
                    f.seek(env.hlen + env.size)
                want = b"END1 %s %010d %08x " % (env.id.encode(), env.size, hcrc)
                n = f.readinto(buf[:_TRAILER])
                tail = bytes(buf[len(want) : _TRAILER])
            return n == _TRAILER and buf[: len(want)] == want and tail[-1:] == b"\n" and (crc is None or int(tail, 16) == crc)
        except (OSError, ValueError, KeyError, IndexError):
            return False


def _crc(f, buf, n):
    crc = 0
    while n > 0:
        k = f.readinto(buf[: min(n, len(buf))])
        if not k:
            raise ValueError("short record")
        crc = binascii.crc32(buf[:k], crc)
        n -= k
    return crc
