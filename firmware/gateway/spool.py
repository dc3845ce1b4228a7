# The mail spool on the SD card: every message the receiver accepted and that
# still has recipients to serve, in the queues "local" (our own mailboxes)
# and "out" (the smarthost).
#
# FAT is not power-loss safe and VfsFat's rename deletes an existing target
# first, so nothing here relies on rename. Each message is ONE write-once file
# that validates itself:
#
#   header   "ODMRGW1 <hlen:6> <id> <received>\n" "F <mail from>\n" "R <q> <rcpt>\n"...
#   body     the un-stuffed message bytes
#   trailer  "END1 <id> <body length:10> <crc32 header:8> <crc32 body:8>\n"
#
# A file whose trailer is missing or whose lengths or checksums disagree was
# cut short and is removed by recover(); nothing else ever reads it. Progress
# (recipients handled) goes to a separate append-only file <id>.d, so the
# message file is never written again once committed. Files live in bucket
# directories of 256 ids, which keeps every FAT directory scan short.
import binascii
import os
import time

from gateway.compat import const, fsync, ilistdir

_MAGIC = b"ODMRGW1"
_END = b"END1"
_TRAILER = const(43)  # len(b"END1 %s %010d %08x %08x\n") with an 8-digit id
_HLEN_AT = const(8)  # where the 6-digit header length starts in line one
_BUF = const(512)
_DIR = const(0x4000)
_RESERVE = const(64)  # ids reserved per write of the seq file
_SLOT = const(512)  # one seq slot per sector: a torn write spoils only one
_QUEUES = ("local", "out")
_LETTERS = "lo"  # file extension letters of the queues, in that order


class SpoolFull(Exception):
    """Not enough room on the card: the receiver answers 452 4.3.1."""


class SpoolError(Exception):
    """A record that cannot be read as a committed message."""


def _bucket(id):
    return id[:6]


def _ext(queues):
    return "".join(_LETTERS[i] for i in range(len(_QUEUES)) if _QUEUES[i] in queues)


def _queue(letter):
    return _QUEUES[_LETTERS.index(letter)]


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _remove(path):
    try:
        os.remove(path)
        return True
    except OSError:
        return False


class Envelope:
    def __init__(self, id, mail_from, rcpts, size, received):
        self.id = id
        self.mail_from = mail_from
        self.rcpts = rcpts
        self.size = size
        self.received = received


class _Record:
    """The parsed header of a message file, plus its progress file."""

    def __init__(self, path, f):
        line = f.readline()
        if line[:8] != _MAGIC + b" ":
            raise SpoolError("not a spool record")
        parts = line.split()
        self.hlen = int(parts[1])
        self.id = parts[2].decode()
        self.received = int(parts[3])
        got = len(line)
        line = f.readline()
        if line[:2] != b"F " or line[-1:] != b"\n":
            raise SpoolError("bad sender line")
        got += len(line)
        self.mail_from = line[2:-1].decode()
        self.rcpts = []
        while got < self.hlen:
            line = f.readline()
            if line[:1] != b"R" or line[-1:] != b"\n":
                raise SpoolError("bad recipient line")
            got += len(line)
            self.rcpts.append((line[4:-1].decode(), _queue(chr(line[2]))))
        if got != self.hlen:
            raise SpoolError("header length mismatch")
        self.size = os.stat(path)[6] - self.hlen - _TRAILER
        self.done = _read_done(path[: path.rfind(".")] + ".d")

    def pending(self, queue=None):
        return [r for i, r in enumerate(self.rcpts) if i not in self.done and (queue is None or r[1] == queue)]


def _done_line(i):
    return b"%04d %08x\n" % (i, binascii.crc32(b"%d" % i))


def _read_done(path):
    """Indices of handled recipients. A torn last line fails its check and is
    ignored: that recipient is served again (a duplicate, never a loss)."""
    done = set()
    try:
        f = open(path, "rb")
    except OSError:
        return done
    with f:
        while True:
            line = f.readline()
            if not line:
                return done
            if len(line) == 14 and line[:4].isdigit():
                i = int(line[:4])
                if line == _done_line(i):
                    done.add(i)


class Body:
    """Exactly the message bytes of a committed record."""

    def __init__(self, path, start, size):
        self._f = open(path, "rb")
        self._f.seek(start)
        self.left = size

    def readinto(self, buf):
        n = min(len(buf), self.left)
        if n <= 0:
            return 0
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
        self._f.write(header)

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
        on the card before this returns (and before the 250)."""
        self._f.write(b"%s %s %010d %08x %08x\n" % (_END, self.id.encode(), self.size, self.hcrc, self.crc))
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
    verify = True  # recover() checks the body checksum, not only the trailer

    def __init__(self, root, clock=None):
        self.root = root
        self.clock = clock or time.time
        self._next = None  # next id to hand out
        self._limit = 0  # ids below this are reserved in the seq file
        self._slot = 0
        self._drafts = set()
        self._buf = None

    # --- ids ---------------------------------------------------------------
    def _seq_read(self):
        best = 0
        try:
            f = open(self.root + "/seq", "rb")
        except OSError:
            return 0
        with f:
            for k in (0, 1):
                f.seek(k * _SLOT)
                line = f.readline()
                if len(line) == 22 and line[:4] == b"SEQ ":
                    v = int(line[4:12], 16)
                    if line == self._seq_line(v) and v > best:
                        best = v
                        self._slot = 1 - k
        return best

    @staticmethod
    def _seq_line(v):
        return b"SEQ %08x %08x\n" % (v, binascii.crc32(b"%x" % v))

    def _seq_write(self, v):
        """Reserve ids below v. Two slots in two sectors, written in turn, so
        a torn write leaves the other (older, smaller) reservation readable."""
        path = self.root + "/seq"
        if not _exists(path):
            with open(path, "wb") as f:
                f.write(bytes(2 * _SLOT))
                fsync(f)
        with open(path, "r+b") as f:
            f.seek(self._slot * _SLOT)
            f.write(self._seq_line(v))
            fsync(f)
        self._slot = 1 - self._slot
        self._limit = v

    def _new_id(self):
        if self._next is None:
            self._ensure_root()
            self._next = max(self._seq_read(), self._highest() + 1, 1)
        if self._next >= self._limit:
            self._seq_write(self._next + _RESERVE)
        id = "%08x" % self._next
        self._next += 1
        return id

    def _highest(self):
        """The largest id on the card, so a lost seq file cannot reuse one."""
        buckets = self._buckets()
        for b in reversed(buckets):
            names = [n for n, _ in self._files(b)]
            if names:
                return int(max(names)[:8], 16)
        return 0

    def _ensure_root(self):
        if not _exists(self.root):
            os.mkdir(self.root)

    # --- listing -----------------------------------------------------------
    def _buckets(self):
        try:
            return sorted(e[0] for e in ilistdir(self.root) if e[1] & _DIR and len(e[0]) == 6)
        except OSError:
            return []

    def _files(self, bucket):
        """(name, ext) of the message files in a bucket, sorted by id."""
        out = []
        for e in ilistdir(self.root + "/" + bucket):
            name = e[0]
            if len(name) > 9 and name[8] == "." and name[9:] != "d":
                out.append((name, name[9:]))
        out.sort()
        return out

    def _path(self, id):
        base = "%s/%s/%s." % (self.root, _bucket(id), id)
        for ext in ("l", "o", "lo"):
            if _exists(base + ext):
                return base + ext
        raise SpoolError("no message " + id)

    def _record(self, path):
        with open(path, "rb") as f:
            return _Record(path, f)

    def ids(self, queue):
        letter = _LETTERS[_QUEUES.index(queue)]
        out = []
        for b in self._buckets():
            for name, ext in self._files(b):
                id = name[:8]
                if letter not in ext or id in self._drafts:
                    continue
                # A single-queue record exists only while something in it is
                # pending; a mixed one needs a look at its progress.
                if len(ext) == 1 or self._record("%s/%s/%s" % (self.root, b, name)).pending(queue):
                    out.append(id)
        return out

    def envelope(self, id):
        r = self._record(self._path(id))
        return Envelope(id, r.mail_from, r.pending(), r.size, r.received)

    def open(self, id):
        path = self._path(id)
        r = self._record(path)
        return Body(path, r.hlen, r.size)

    def counts(self):
        return {q: len(self.ids(q)) for q in _QUEUES}

    def free_bytes(self):
        try:
            st = os.statvfs(self.root)
        except OSError:  # not created yet: the card it will be on
            st = os.statvfs(self.root[: self.root.rfind("/")] or "/")
        return st[0] * st[4]

    # --- writing -----------------------------------------------------------
    def room(self, size=0):
        """Whether a message of `size` bytes (0 = not declared) may start."""
        return self.free_bytes() >= max(self.min_free, int(size * self.size_factor))

    def begin(self, mail_from, rcpts, size=0):
        if not rcpts:
            raise ValueError("no recipients")
        if not self.room(size):
            raise SpoolFull("card full")
        for _, q in rcpts:
            if q not in _QUEUES:
                raise ValueError("unknown queue " + q)
        id = self._new_id()
        d = "%s/%s" % (self.root, _bucket(id))
        if not _exists(d):
            os.mkdir(d)
        lines = [b"F %s\n" % mail_from.encode()]
        for addr, q in rcpts:
            lines.append(b"R %s %s\n" % (_LETTERS[_QUEUES.index(q)].encode(), addr.encode()))
        rest = b"".join(lines)
        now = int(self.clock())
        # Line one has a fixed-width length field, so its own length is known.
        hlen = len(b"%s %06d %s %d\n" % (_MAGIC, 0, id.encode(), now)) + len(rest)
        header = b"%s %06d %s %d\n" % (_MAGIC, hlen, id.encode(), now) + rest
        self._drafts.add(id)
        try:
            return Draft(self, id, "%s/%s.%s" % (d, id, _ext([q for _, q in rcpts])), header)
        except OSError:
            self._drafts.discard(id)
            raise

    def done(self, id, queue, addresses=None):
        path = self._path(id)
        r = self._record(path)
        marks = [
            i
            for i, (addr, q) in enumerate(r.rcpts)
            if q == queue and i not in r.done and (addresses is None or addr in addresses)
        ]
        if not marks:
            return
        dpath = path[: path.rfind(".")] + ".d"
        if len(marks) + len(r.done) == len(r.rcpts):
            # All handled: the message file goes first, so a crash here
            # leaves only an orphan progress file, which recover() removes.
            os.remove(path)
            _remove(dpath)
            self._prune(_bucket(id))
            return
        with open(dpath, "ab") as f:
            for i in marks:
                f.write(_done_line(i))
            fsync(f)

    def _prune(self, bucket):
        if self._next is not None and bucket == _bucket("%08x" % self._next):
            return  # about to be used again
        try:
            os.rmdir(self.root + "/" + bucket)
        except OSError:
            pass  # not empty

    # --- boot ----------------------------------------------------------------
    def recover(self):
        """Remove every record that is not a whole committed message, and
        progress files without a message. Returns (kept, removed)."""
        self._ensure_root()
        self._next = None
        kept = removed = 0
        for b in self._buckets():
            d = self.root + "/" + b
            names = sorted(e[0] for e in ilistdir(d))
            for name in names:
                path = d + "/" + name
                if name[9:] == "d":
                    if not any(n[:8] == name[:8] and n != name for n in names):
                        _remove(path)  # progress of a message already gone
                    continue
                if self._valid(path):
                    kept += 1
                else:
                    _remove(path)
                    _remove(path[: path.rfind(".")] + ".d")
                    removed += 1
            try:
                os.rmdir(d)
            except OSError:
                pass
        self._buf = None
        return kept, removed

    def _valid(self, path):
        try:
            with open(path, "rb") as f:
                r = _Record(path, f)
                if r.size < 0 or not r.pending():
                    return False
                if self._buf is None:
                    self._buf = bytearray(_BUF * 8)
                buf = self._buf
                mv = memoryview(buf)
                f.seek(0)
                hcrc = _crc(f, mv, r.hlen)
                if self.verify:
                    crc = _crc(f, mv, r.size)
                else:
                    f.seek(r.hlen + r.size)
                    crc = None
                n = f.readinto(mv[:_TRAILER])
                want = b"%s %s %010d %08x " % (_END, r.id.encode(), r.size, hcrc)
                if n != _TRAILER or buf[: len(want)] != want or buf[_TRAILER - 1] != 10:
                    return False
                return crc is None or int(bytes(buf[len(want) : _TRAILER - 1]), 16) == crc
        except (OSError, ValueError, IndexError, SpoolError, UnicodeError):
            return False


def _crc(f, mv, n):
    crc = 0
    while n > 0:
        k = f.readinto(mv[: min(n, len(mv))])
        if not k:
            raise SpoolError("short record")
        crc = binascii.crc32(mv[:k], crc)
        n -= k
    return crc
