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
#   trailer  "END2 <id> <body length:10> <crc32 header:8> <crc32 trailer:8>\n"
#            (the last field sums the trailer's first 34 bytes)
#
# A file whose trailer is missing, or whose lengths or checksums disagree,
# was cut short; recover() removes it and nothing else ever reads it. The
# body has no checksum of its own: a trailer at the very end of the length
# that the directory entry holds proves that everything before it is on the
# card, because f_sync writes the data sectors, then the FAT, and only then
# the directory entry with the length (docs/spool.md, "crash guarantee"). Records
# written by older firmware end in "END1 ... <crc32 body:8>"; recovery still
# checks those bodies.
# Progress (recipients handled) goes to a separate append-only file <id>.d,
# so a committed message file is never written again. Buckets hold 256 ids,
# which keeps every FAT directory scan short. This module writes; recovery,
# listing and reading are in spoolread, imported when first needed, so a
# receiver that only writes does not carry them in its heap.
import binascii
import os
import time

from gateway.compat import const, fsync

_MAGIC = b"ODMRGW1"
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


class Draft:
    """A message being received. Nothing of it is visible until commit()."""

    def __init__(self, spool, id, path, header):
        """header yields the header's lines; each is written and summed as
        it comes, so no line list or joined copy is ever held (100
        recipients make 2.5 KB, a block a cut-up heap may not have)."""
        self.spool = spool
        self.id = id
        self.path = path
        self.size = 0
        self.hcrc = 0
        self._check_at = spool.check_every
        self._f = open(path, "wb")
        try:
            for line in header:
                self._f.write(line)
                self.hcrc = binascii.crc32(line, self.hcrc)
        except OSError:
            self.abort()
            raise

    def write(self, buf):
        self._f.write(buf)
        self.size += len(buf)
        if self.size >= self._check_at:
            self._check_at = self.size + self.spool.check_every
            if self.spool.free_bytes() < self.spool.min_free:
                raise SpoolFull("card full while receiving")

    def commit(self):
        """The trailer, then FatFs f_sync: data, FAT and directory entry are
        on the card before this returns (and so before the 250)."""
        t = b"END2 %s %010d %08x " % (self.id.encode(), self.size, self.hcrc)
        self._f.write(b"%s%08x\n" % (t, binascii.crc32(t)))
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
    verify = True  # recover() checks the body checksums of older END1 records

    def __init__(self, root, clock=None):
        self.root = root
        self.clock = clock or time.time
        self._next = None  # the next id to hand out
        self._limit = 0  # ids below this are reserved in the seq file
        self._slot = 0
        self._drafts = set()
        self._made = None  # the bucket directory known to exist

    # --- ids: 8 hex digits from a counter, so sortable and never reused ------
    def _new_id(self):
        if self._next is None:
            if not _exists(self.root):
                os.mkdir(self.root)
            from gateway import spoolread

            self._next = max(self._seq(None), spoolread.highest(self) + 1)
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

    # --- the reading side (spoolread) -----------------------------------------
    def recover(self):
        """At boot: removes every record that is not a whole committed
        message, and progress files without a message. -> (kept, removed)"""
        from gateway import spoolread

        return spoolread.recover(self)

    def ids(self, queue):
        from gateway import spoolread

        return spoolread.ids(self, queue)

    def envelope(self, id):
        from gateway import spoolread

        env = spoolread.Envelope(spoolread.path(self, id))
        # Only the pending recipients, renumbered: nothing in it is done. A
        # record with none done keeps its list (100 recipients: a second
        # 512-byte block that a cut-up heap may not have).
        if env.done:
            env.rcpts = env.pending()
            env.done = set()
        return env

    def open(self, id, env=None):
        """The message bytes of record id. A caller holding its envelope
        passes it: records are write-once, so path and sizes still hold, and
        the header is not found and parsed again."""
        from gateway import spoolread

        if env is None:
            env = spoolread.Envelope(spoolread.path(self, id))
        return spoolread.Body(env.path, env.hlen, env.size)

    def counts(self):
        return {q: len(self.ids(q)) for q in _QUEUES}

    def done(self, id, queue, addresses=None):
        from gateway import spoolread

        spoolread.done(self, id, queue, addresses)

    def _path(self, id):
        from gateway import spoolread

        return spoolread.path(self, id)

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
        ext = ""
        rest = len(mail_from.encode()) + 3  # "F <from>\n"
        for addr, q in rcpts:
            letter = _letter(q)
            if letter not in ext:
                ext = "lo" if ext else letter
            rest += len(addr.encode()) + 5  # "R <q> <rcpt>\n"
        if not ext:
            raise ValueError("no recipients")
        id = self._new_id()
        d = "%s/%s" % (self.root, id[:6])
        if d != self._made:  # a stat per message costs time and heap
            if not _exists(d):
                os.mkdir(d)
            self._made = d
        now = int(self.clock())
        # Line one has a fixed-width length field, so its own length is known.
        first = len(b"%s %06d %s %d\n" % (_MAGIC, 0, id.encode(), now))
        self._drafts.add(id)
        try:
            return Draft(self, id, "%s/%s.%s" % (d, id, ext), _header(id, now, first + rest, mail_from, rcpts))
        except OSError:
            self._drafts.discard(id)
            raise


def _header(id, now, hlen, mail_from, rcpts):
    yield b"%s %06d %s %d\n" % (_MAGIC, hlen, id.encode(), now)
    yield b"F %s\n" % mail_from.encode()
    for addr, q in rcpts:
        yield b"R %s %s\n" % (_letter(q).encode(), addr.encode())


def _letter(queue):
    i = _QUEUES.index(queue)
    return _LETTERS[i : i + 1]  # a slice: s[i] would intern a qstr
