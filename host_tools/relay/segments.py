"""A domain box's mail in append-only segment files, the relay's intake path.

domains/<domain>/ holds segment files <id>.seg, each a run of records, one
per message:

    head    24 bytes: b"OQR1", then as u32 little-endian the meta's length,
            the number of recipients, the body's length, the CRC-32 of the
            head's first 16 bytes and the meta, the CRC-32 of the body
    meta    JSON: id, mail_from, rcpts, received, size, origin
    marks   one byte per recipient: "-" still to deliver, "+" done with
    body    the message, CRLF lines

A record proves its own completeness, as a Postfix queue file does with its
end record: both checksums must match, so a record that a power cut left
half written reads as the end of its segment, and start-up cuts it off
(those bytes were never acknowledged: every 250 waits for the fsync of its
record; whole records after a damaged one are queued again first). Records are only ever appended, a batch of them with one write and
one fsync for every message of the batch: no new file, no directory entry
per message. The marks are the only bytes changed in place: a recipient
done with gets "+", one byte that a crash either wrote or did not (Postfix
marks its delivered recipients in place the same way). A segment whose
every mark is "+" is removed, by the relay only; commands in another process
(`odmrgw relay queue`) never append to the relay's segments: they rename
whole segments of their own into the box, and set marks."""
import json
import logging
import os
import struct
import threading
import zlib

log = logging.getLogger("relay")

MAGIC = b"OQR1"
HEAD = struct.Struct("<4sIIIII")    # magic, meta length, recipients, body length, meta CRC, body CRC
PENDING, DONE = b"-", b"+"
SUFFIX = ".seg"


class Record:
    """One record as read from a segment."""

    __slots__ = ("meta", "marks", "marks_off", "body_off", "body_len", "body_crc", "end")

    @property
    def pending(self):
        """Indices of the recipients still to deliver."""
        return _pending(self.marks)


def _pending(marks):
    return [i for i, m in enumerate(marks) if m != DONE[0]]


def encode(meta, body):
    """The buffers of one record (the body is not copied)."""
    blob = json.dumps(meta, sort_keys=True).encode()
    head = HEAD.pack(MAGIC, len(blob), len(meta["rcpts"]), len(body), 0, 0)[:16]
    crc = zlib.crc32(blob, zlib.crc32(head))
    return [head + struct.pack("<II", crc, zlib.crc32(body)), blob, PENDING * len(meta["rcpts"]), body]


def scan(read, stop, verify=False):
    """(records, end): the whole records from the segment's start up to
    `stop` bytes, and where the last of them ends; read(n, offset) reads the
    segment. `verify` checks each body's checksum too (start-up does; a
    reader checks the body it reads)."""
    records, off = [], 0
    while True:
        rec = _record_at(read, off, stop, verify)
        if rec is None:
            return records, off
        records.append(rec)
        off = rec.end


class Segments:
    """The segment side of a Store. `owner` is the relay itself (it holds the
    queue's lock): it appends to one open segment per box and removes
    segments that are done with. Others write each batch into new segments
    of their own, renamed into place."""

    READ_AHEAD = 1024           # bytes read at a record's start: the head, the meta and the marks, mostly
    SEGMENT_MAX = 4 << 20       # an open segment is closed once it holds this much; a new one takes over
    CACHED_FDS = 64             # descriptors kept for reading and marks (a queue can hold thousands of segments)

    def __init__(self, root, new_id):
        self.root = root
        self.new_id = new_id
        self.owner = False
        self.open = {}          # box -> Open: the segment the owner appends to (its descriptor its own)
        self._fds = {}          # path -> descriptor, for reading and for marks, the oldest first
        # Held around every use of a cached descriptor and around closing
        # one: a descriptor closed under a reader in another thread could be
        # reused by the next open, and marks written into another segment.
        self._fd_lock = threading.Lock()
        # path -> where the segment's first record with a pending mark may
        # start: every record before it is done with, and stays so (a mark
        # only ever goes from "-" to "+"), so a reader skips them. Mail is
        # delivered mostly in order, so a box drained while mail arrives is
        # read from about its newest records on, not from its start.
        self._done_until = {}

    # -- writing -----------------------------------------------------------------
    def append(self, box, batch):
        """Write `batch` ([(meta, body)]) after the committed records of the
        box's open segment (of a new one, written in tmp/, when not the
        owner). Returns (Open, [(marks offset, recipients)] per record);
        nothing is synced yet. Raises OSError."""
        seg = self.open.get(box) if self.owner else None
        if seg is None:
            seg = self._new_segment(box)
        buffers, placed, off = [], [], seg.end
        for meta, body in batch:
            bufs = encode(meta, body)
            placed.append((off + len(bufs[0]) + len(bufs[1]), len(meta["rcpts"])))
            buffers += bufs
            off += sum(map(len, bufs))
        seg.written = off
        try:
            if os.pwritev(seg.fd, buffers, seg.end) != off - seg.end:
                raise OSError(28, "No space left on device")    # a short write to a file: the disk is full
        except OSError:
            self.failed(seg)
            self.done_writing(seg)
            raise
        return seg, placed

    def _new_segment(self, box):
        name = self.new_id() + SUFFIX
        final = self.root / box / name
        seg = Open(box, final if self.owner else self.root / "tmp" / name, final)
        if self.owner:
            # Known as open before the file exists: a reader that lists the
            # box meanwhile must take it for open (nothing committed), not
            # for a segment with nothing left in it.
            self.open[box] = seg
        try:
            seg.fd = os.open(seg.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            self.open.pop(box, None)
            raise
        return seg

    def place(self, seg):
        """After the batch's fsync: another process's new segment goes into its box."""
        if seg.path != seg.final:
            os.replace(seg.path, seg.final)
            seg.path = seg.final

    def committed(self, seg):
        """The batch is on disk: its records count (the owner's readers see them)."""
        seg.end = seg.written
        seg.new = False
        if seg.end >= self.SEGMENT_MAX:
            self._closed(seg)

    def failed(self, seg):
        """The batch's write or sync failed: cut its bytes off again, and never
        append to this segment more (after a failed fsync the kernel may have
        dropped other pages of it too). The caller marks its records done as
        well, in case the cut failed."""
        try:
            os.ftruncate(seg.fd, seg.end)
        except OSError:
            pass
        if seg.path != seg.final:
            os.unlink(seg.path)
        self._closed(seg)

    def done_writing(self, seg):
        """The end of a batch: another process's segment is closed."""
        if not self.owner:
            os.close(seg.fd)

    def _closed(self, seg):
        """The owner appends to `seg` no more (the caller holds the store's lock)."""
        if self.open.get(seg.box) is seg:
            del self.open[seg.box]
            os.close(seg.fd)

    # -- reading -----------------------------------------------------------------
    def files(self, box):
        d = self.root / box
        return sorted(p for p in d.iterdir() if p.name.endswith(SUFFIX)) if d.is_dir() else []

    def records(self, path, first=False):
        """The segment's whole records (for the owner's open segment, only those
        committed) but for the run of done ones at its start; with `first`,
        only the first with a recipient pending (is anything left?)."""
        seg = self.open.get(self._box_of(path))
        key = str(path)
        out, off = [], self._done_until.get(key, 0)
        try:
            stop = seg.end if seg is not None and seg.final == path else self._io(path, lambda fd: os.fstat(fd).st_size)
            while (rec := _record_at(lambda n, at: self._io(path, lambda fd: os.pread(fd, n, at)), off, stop, False)):
                off = rec.end
                if not out and not rec.pending:
                    self._done_until[key] = off
                    continue
                out.append(rec)
                if first:
                    break
        except FileNotFoundError:
            return []       # removed meanwhile
        return out

    def is_open(self, path):
        seg = self.open.get(self._box_of(path))
        return seg is not None and seg.final == path

    def _box_of(self, path):
        return path.parent.relative_to(self.root).as_posix()

    def _io(self, path, op):
        """op(descriptor) for the segment at `path`, opened once and kept."""
        with self._fd_lock:
            fd = self._fds.get(str(path))
            if fd is None:
                fd = self._fds[str(path)] = os.open(path, os.O_RDWR)
                if len(self._fds) > self.CACHED_FDS:
                    os.close(self._fds.pop(next(iter(self._fds))))
            return op(fd)

    def body(self, path, rec):
        data = self._io(path, lambda fd: os.pread(fd, rec.body_len, rec.body_off))
        if len(data) != rec.body_len or zlib.crc32(data) != rec.body_crc:
            log.error("queue: %s: the message at byte %d is damaged (checksum); left for a human", path, rec.body_off)
            return None
        return data

    # -- marks -------------------------------------------------------------------
    def pending(self, path, rec):
        """The record's recipients still to deliver, as the disk has them now."""
        try:
            marks = self._io(path, lambda fd: os.pread(fd, len(rec.marks), rec.marks_off))
        except FileNotFoundError:
            return []       # the segment was removed: nothing left in it
        return _pending(marks)

    def mark(self, path, marks_off, indices):
        """Set "+" for those recipients (not synced); False if none was still
        pending. Only marks that change are written, so a mark set meanwhile
        by another process is never turned back."""
        was = self._io(path, lambda fd: os.pread(fd, max(indices) + 1, marks_off))
        todo = sorted(i for i in indices if was[i:i + 1] == PENDING)
        run = []
        for i in todo + [None]:
            if run and i != run[-1] + 1:
                self._io(path, lambda fd: os.pwrite(fd, DONE * len(run), marks_off + run[0]))
                run = []
            run.append(i)
        return bool(todo)

    def sync(self, paths):
        """Make the marks in `paths` durable."""
        for path in paths:
            try:
                fd = self._io(path, os.dup)     # synced without the lock: readers need not wait for the disk
            except FileNotFoundError:
                continue
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)

    def remove_if_done(self, path):
        """The owner removes a segment with nothing left to deliver (also its
        open one: the next batch starts a new segment)."""
        if self.records(path, first=True):
            return False
        seg = self.open.get(self._box_of(path))
        if seg is not None and seg.final == path:
            self._closed(seg)
        with self._fd_lock:
            fd = self._fds.pop(str(path), None)
            if fd is not None:
                os.close(fd)
        self._done_until.pop(str(path), None)
        path.unlink(missing_ok=True)
        return True

    # -- start-up ----------------------------------------------------------------
    def recover(self, path, requeue):
        """At start-up (owner, nothing open): cut the segment after its last
        whole record. Whole records found past that point (the disk damaged
        one in the middle) are handed to requeue([(Record, body)]), which
        queues them again durably first: at-least-once. The cut bytes go to
        <name>.<offset>.broken for a human. Returns the number of messages
        the segment holds with something to deliver (0: it was removed)."""
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            records, end = scan(lambda n, off: os.pread(fd, n, off), size, verify=True)
            if end < size:
                tail = os.pread(fd, size - end, end)
                found = _salvage(tail)
                requeue(found)
                aside = path.with_name(f"{path.stem}.{end}.broken")
                _write_durably(aside, tail)
                os.ftruncate(fd, end)
                os.fsync(fd)
                log.warning("queue: %s: %d byte(s) after its last whole record cut off (kept in %s): a write a "
                            "crash interrupted, never acknowledged, or a damaged disk; %d whole message(s) found "
                            "in them queued again", path, size - end, aside.name, len(found))
        finally:
            os.close(fd)
        live = sum(1 for rec in records if rec.pending)
        if not live:
            path.unlink()
        return live


def _salvage(tail):
    """[(Record, body)]: the whole records with a recipient pending in bytes
    that do not start with one (their offsets are the bytes')."""
    found, at = [], tail.find(MAGIC, 1)
    while at >= 0:
        rec = _record_at(lambda n, off: tail[off:off + n], at, len(tail), True)
        if rec is None:
            at = tail.find(MAGIC, at + 1)
            continue
        if rec.pending:
            found.append((rec, tail[rec.body_off:rec.end]))
        at = tail.find(MAGIC, rec.end)
    return found


def _write_durably(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Open:
    """A segment being appended to: `end` is where its committed records end,
    `written` where the batch in flight ends."""

    def __init__(self, box, path, final):
        self.box = box
        self.path = path        # where it is written: the box, or tmp/ until committed
        self.final = final
        self.fd = None
        self.new = True         # its name is not durable in the box yet
        self.end = self.written = 0
        self.error = None       # the batch in flight's, and the drafts with a record in it (Store)
        self.drafts = []


def _record_at(read, off, stop, verify):
    if stop - off < HEAD.size:
        return None
    buf = read(min(Segments.READ_AHEAD, stop - off), off)
    magic, meta_len, n, body_len, meta_crc, body_crc = HEAD.unpack_from(buf)
    if magic != MAGIC:
        return None
    marks_off = off + HEAD.size + meta_len
    body_off = marks_off + n
    end = body_off + body_len
    if end > stop:
        return None
    if len(buf) < body_off - off:
        buf += read(body_off - off - len(buf), off + len(buf))
    blob = buf[HEAD.size:HEAD.size + meta_len]
    if zlib.crc32(blob, zlib.crc32(buf[:16])) != meta_crc:
        return None
    try:
        meta = json.loads(blob)
    except ValueError:
        return None
    if verify and zlib.crc32(read(body_len, body_off)) != body_crc:
        return None
    rec = Record()
    rec.meta, rec.marks = meta, buf[HEAD.size + meta_len:body_off - off]
    rec.marks_off, rec.body_off, rec.body_len, rec.body_crc, rec.end = marks_off, body_off, body_len, body_crc, end
    return rec
