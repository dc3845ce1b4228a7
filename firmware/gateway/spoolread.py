# The reading side of the spool (format: see spool.py): the sweep, queue
# listings, envelopes and progress marks. Imported on first use by the Spool
# methods that need it, so a receiver that only writes messages does not
# carry this code in its heap. It reads the spool it is given and returns
# what it found: the Spool keeps its own state.
import binascii
import os
from errno import ENOENT

from gateway.compat import const
from gateway.record import LETTERS, MAGIC, QUEUES, TRAILER, Scan, buckets, exists, letter, remove


# The buffer a record's check reads through: a trailer and more, and a
# small block (512 bytes, made at each listing, was one a cut-up heap did
# not have when the poll began).
_CHECK = const(64)


def _done_line(i):
    return b"%04d %08x\n" % (i, binascii.crc32(b"%d" % i))


class Envelope:
    """.id .mail_from .size .received (unix s) .count (recipients) of a
    record. The recipients themselves stay on the card and are read when
    asked (recipients()): a list of 100 took a 512-byte block that a heap
    cut up by the day's sessions did not have. Per recipient it holds two
    bits, its queue and whether it was handled (.done, from the progress
    file)."""

    def __init__(self, path):
        """Parses a record's header. Raises ValueError/OSError on a damaged
        header."""
        self.path = path
        with open(path, "rb") as f:
            line = f.readline()
            if line[:8] != MAGIC + b" ":
                raise ValueError("not a spool record")
            _, hlen, id, received = line.split()
            self.hlen = int(hlen)
            self.id = id.decode()
            self.received = int(received)
            got = len(line)
            # An "R l x\n" line takes 6 bytes: room for a bit each and more.
            self.out = bytearray(self.hlen // 32 + 1)  # recipient i is in "out"
            self.done = bytearray(len(self.out))  # recipient i was handled
            self.count = 0
            while got < self.hlen:
                line = f.readline()
                got += len(line)
                if line[-1:] != b"\n" or line[1:2] != b" ":
                    raise ValueError("bad header line")
                if line[:1] == b"F":
                    self.mail_from = line[2:-1].decode()
                else:
                    if QUEUES[LETTERS.index(line[2:3].decode())] == "out":
                        _set(self.out, self.count)
                    self.count += 1
            self.size = f.seek(0, 2) - self.hlen - TRAILER
        if got != self.hlen or not self.count:
            raise ValueError("bad header length")
        try:
            f = open(path[: path.rfind(".") + 1] + "d", "rb")
        except OSError:
            return
        # A torn last line fails its check and is ignored: that recipient is
        # served again (a duplicate, never a loss).
        with f:
            for line in f:
                if len(line) == 14 and line[:4].isdigit() and line == _done_line(int(line[:4])):
                    i = int(line[:4])
                    if i < self.count:
                        _set(self.done, i)

    def queue(self, i):
        return QUEUES[_bit(self.out, i)]

    def pending(self, queue=None):
        """How many recipients (of `queue`) are still to be served."""
        n = 0
        for i in range(self.count):
            if not _bit(self.done, i) and (queue is None or self.queue(i) == queue):
                n += 1
        return n

    def recipients(self, queue=None):
        """`with env.recipients(queue) as rs: for i, address, queue in rs:`
        the pending recipients (of `queue`), read from the record."""
        return _Recipients(self, queue)

    @property
    def rcpts(self):
        """[(address, queue)] of the pending recipients, for the host's
        checks and tools (board/unix); the box reads them one at a time."""
        with self.recipients() as rs:
            return [(a, q) for _, a, q in rs]

    def addresses(self, queue):
        """The pending addresses of `queue` as a list, for a client that
        sends them all at once (gateway.smtp.submit)."""
        with self.recipients(queue) as rs:
            return [a for _, a, _ in rs]


class _Recipients:
    """Envelope.recipients(): reads the header's recipient lines one at a
    time; the file is closed at the end of the `with`."""

    def __init__(self, env, queue):
        self.env = env
        self.want = queue
        self.i = -1
        self._f = open(env.path, "rb")
        try:
            self.left = env.hlen - len(self._f.readline())
        except BaseException:
            # No `with` holds it yet: a file left to its finaliser is closed
            # at some later collection, not now.
            self._f.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False

    def __iter__(self):
        return self

    def __next__(self):
        env = self.env
        while self.left > 0:
            line = self._f.readline()
            self.left -= len(line)
            if line[:1] != b"R":
                continue
            self.i += 1
            i = self.i
            if _bit(env.done, i) or self.want and env.queue(i) != self.want:
                continue
            return i, line[4:-1].decode(), env.queue(i)
        raise StopIteration


def _bit(bits, i):
    return bits[i >> 3] >> (i & 7) & 1


def _set(bits, i):
    bits[i >> 3] |= 1 << (i & 7)


# --- listing ---------------------------------------------------------------
def path(sp, id):
    base = "%s/%s/%s." % (sp.root, id[:6], id)
    for ext in ("l", "o", "lo"):
        try:
            os.stat(base + ext)
            return base + ext
        except OSError as e:
            if e.args[0] != ENOENT:
                raise  # a card error is not "no such message"
    raise KeyError(id)


def bits(sp, bucket, letters, queue=None):
    """A 256-bit map of the ids in a bucket whose record is in one of
    `letters`' queues (and has `queue` pending): sorting by bit costs no
    list of names, which a bucket of 256 would need on a small heap."""
    out = bytearray(32)
    with Scan(sp.root + "/" + bucket) as entries:
        for e in entries:
            name = e[0]
            ext = name[9:]
            if not ext or ext == "d" or not (letters in ext or ext in letters) or name[:8] in sp.drafts:
                continue
            # A single-queue record exists only while something in it is
            # pending; a mixed one needs a look at its progress (a header
            # too damaged to tell is listed, and judged by ids()).
            if queue and len(ext) > 1:
                try:
                    if not Envelope("%s/%s/%s" % (sp.root, bucket, name)).pending(queue):
                        continue
                except (OSError, ValueError, IndexError):
                    pass
            i = int(name[6:8], 16)
            out[i >> 3] |= 1 << (i & 7)
    return out


def highest(sp):
    """The largest id in the spool, in case the seq file was lost."""
    for b in reversed(buckets(sp.root)):
        m = bits(sp, b, "lo")
        for i in range(255, -1, -1):
            if m[i >> 3] & 1 << (i & 7):
                return int(b, 16) << 8 | i
    return 0


def counts(sp):
    out = {}
    for q in QUEUES:
        out[q] = 0
        for b in buckets(sp.root):
            out[q] += sum(bin(x).count("1") for x in bits(sp, b, letter(q), q))
    return out


def ids(sp, queue, after="", limit=0):
    """Whole records only: each listed record is judged here (header sum
    and trailer, no body), and one cut short by a power cut is removed."""
    mark = letter(queue)
    maps = []
    # First judged, then listed: the names are made in one run, not strewn
    # among the judging's garbage (a small heap would be cut up by them).
    # Buckets past the limit are not even scanned: a batch of 16 costs the
    # same at 10,000 waiting as at 16.
    n = 0
    buf = memoryview(bytearray(_CHECK))
    for b in buckets(sp.root):
        if b < after[:6]:
            continue
        if limit and n == limit:
            break
        m = bits(sp, b, mark, queue)
        maps.append((b, m))
        for i in range(256):
            if not m[i >> 3] & 1 << (i & 7):
                continue
            if limit and n == limit or "%s%02x" % (b, i) <= after or not _whole(sp, "%s%02x" % (b, i), buf):
                m[i >> 3] &= ~(1 << (i & 7))
            else:
                n += 1
    out = [None] * n
    n = 0
    for b, m in maps:
        for i in range(256):
            if m[i >> 3] & 1 << (i & 7):
                out[n] = "%s%02x" % (b, i)
                n += 1
    return out


def _whole(sp, id, buf):
    """Removes the record if it was cut short. A read error is no proof of
    a cut: the record is left for another look."""
    try:
        p = path(sp, id)
        if valid(p, buf):
            return True
    except (KeyError, OSError):
        return False
    remove(p)
    remove(p[: p.rfind(".")] + ".d")
    return False


# --- progress --------------------------------------------------------------
def done(sp, id, queue, addresses=None, keep=None):
    """Marks the recipients of `queue` handled (those in `addresses`, or
    all but those whose bit is set in `keep`, a bitmap by recipients()'
    index); returns the bucket directory of a record that is gone with that
    (every recipient handled), else None."""
    try:
        p = path(sp, id)
    except KeyError:
        return None  # already complete and gone
    env = Envelope(p)
    marks = bytearray(len(env.done))
    n = 0
    with env.recipients(queue) as rs:
        for i, addr, _ in rs:
            if (addresses is None or addr in addresses) and not (keep and _bit(keep, i)):
                _set(marks, i)
                n += 1
    if not n:
        return None
    dpath = p[: p.rfind(".")] + ".d"
    if n == env.pending():
        # All handled. The message file goes first: a crash here leaves
        # only an orphan progress file, which recover() removes.
        os.remove(p)
        remove(dpath)
        return p[: p.rfind("/")]
    from gateway.compat import fsync

    with open(dpath, "ab") as f:
        for i in range(env.count):
            if _bit(marks, i):
                f.write(_done_line(i))
        fsync(f)
    return None


# --- the sweep (host tools, tests) -----------------------------------------
def recover(sp):
    """Removes every record that is not a whole committed message, and
    progress files without a message. Returns (kept, removed, the highest
    id seen as a number)."""
    if not exists(sp.root):
        os.mkdir(sp.root)
    kept = removed = top = 0
    buf = memoryview(bytearray(_CHECK))
    for b in buckets(sp.root):
        d = sp.root + "/" + b
        # No list of names: a bucket of 256 would not fit a small heap.
        with Scan(d) as entries:
            for e in entries:
                name = e[0]
                p = d + "/" + name
                try:
                    top = max(top, int(name[:8], 16))
                except ValueError:
                    pass
                if name[9:] == "d":
                    try:
                        path(sp, name[:8])
                    except KeyError:
                        remove(p)  # the progress of a message already gone
                elif valid(p, buf, True):
                    kept += 1
                else:
                    remove(p)
                    remove(p[: p.rfind(".")] + ".d")
                    removed += 1
        sp.prune(d)
    return kept, removed, top


def valid(path, buf, unread=None):
    """A whole committed record: its header parses and sums right, and at
    the end of the length the directory entry gives stands the trailer that
    names this id, body length and header sum, with its own sum right. A
    read error is no proof of a cut: it raises, or with `unread` given
    returns that."""
    try:
        env = Envelope(path)
        if env.size < 0 or not env.pending():
            return False
        with open(path, "rb") as f:
            hcrc = _crc(f, buf, env.hlen)
            f.seek(env.hlen + env.size)
            n = f.readinto(buf[:TRAILER])
            t = bytes(buf[:n])
            if n != TRAILER or t[:5] != b"END2 " or t[-1:] != b"\n" or t[5:34] != b"%s %010d %08x " % (
                    env.id.encode(), env.size, hcrc):
                return False
            return int(t[34:42], 16) == binascii.crc32(t[:34])
    except (ValueError, KeyError, IndexError):
        return False
    except OSError:
        if unread is None:
            raise
        return unread


def _crc(f, buf, n):
    crc = 0
    while n > 0:
        k = f.readinto(buf[: min(n, len(buf))])
        if not k:
            raise ValueError("short record")
        crc = binascii.crc32(buf[:k], crc)
        n -= k
    return crc
