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
# the directory entry with the length (docs/spool.md, "crash guarantee").
# Progress (recipients handled) goes to a separate append-only file <id>.d,
# so a committed message file is never written again. Buckets hold 256 ids,
# which keeps every FAT directory scan short. This module writes; recovery,
# listing and reading are in spoolread, imported when first needed (_read),
# so a receiver that only writes does not carry them in its heap. The format
# and the file helpers the mailboxes share are in gateway.record.
#
# A message for exactly one mailbox is written as this same record straight
# into that mailbox (Mailboxes.route): it is stored once, and its commit is
# the delivery. Boot proves nothing record by record: a record is judged
# (trailer, header sum) when it is first listed, and one cut short is
# removed then, so boot time does not grow with the mail held.
import binascii
import os
import time
from array import array

from gateway.compat import const, fsync
from gateway.record import MAGIC, exists, letter, remove

_RESERVE = const(256)  # ids reserved per write of the seq file (a sync each)
_SLOT = const(512)  # one seq slot per sector: a torn write spoils only one


class SpoolFull(Exception):
    """Not enough room on the card: the receiver answers 452 4.3.1."""


def _read():
    """The reading side, loaded at its first use."""
    from gateway import spoolread

    return spoolread


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

    def __init__(self, spool, id, path, header, copies=0, owner=None, floor=None):
        """header yields the header's lines; each is written and summed as
        it comes, so no line list or joined copy is ever held (100
        recipients make 2.5 KB, a block a cut-up heap may not have)."""
        self.spool = spool
        self.id = id
        self.path = path
        self.size = 0
        self.hcrc = self.hlen = 0
        # The hand-off will copy the message this many times: the receiver
        # keeps that room free too, so it never accepts what it cannot deliver.
        self.copies = copies
        self.owner = owner  # the mailbox user of a record written straight there
        self.floor = spool.min_free if floor is None else floor
        self._check_at = spool.check_every
        self._f = open(path, "wb")
        try:
            for line in header:
                self._f.write(line)
                self.hcrc = binascii.crc32(line, self.hcrc)
                self.hlen += len(line)
        except BaseException:  # a full card, or no heap for a line: nothing left half-written or open
            self.abort()
            raise

    def write(self, buf):
        # A file on the card writes all of buf or raises (ENOSPC when full).
        self.size += self._f.write(buf)
        if self.size >= self._check_at:
            self._check_at = self.size + self.spool.check_every
            if self.spool.free_bytes() < self.floor + self.copies * self.size + self.spool.owed:
                raise SpoolFull("card full while receiving")

    def tell(self):
        return self.hlen + self.size

    def commit(self):
        """The trailer, then FatFs f_sync: data, FAT and directory entry are
        on the card before this returns (and so before the 250)."""
        t = b"END2 %s %010d %08x " % (self.id.encode(), self.size, self.hcrc)
        self._f.write(b"%s%08x\n" % (t, binascii.crc32(t)))
        fsync(self._f)
        self._f.close()
        self._f = None
        self.spool.drafts.discard(self.id)
        if self.owner:
            self.spool.mailboxes.arrived(self)
        elif "l" in self.path[self.path.rfind(".") :]:  # a spool record for the mailboxes
            sp = self.spool
            if len(sp.fresh) < sp.FRESH:
                sp.fresh.append(int(self.id, 16))
            else:
                sp.rescan = True
            sp.owed += self.copies * self.size
        return self.id

    def abort(self):
        if self._f:
            try:
                self._f.close()
            except OSError:
                pass
            self._f = None
            remove(self.path)
        self.spool.drafts.discard(self.id)


class Spool:
    min_free = 256 * 1024  # below this the receiver answers 452 4.3.1
    reserve = 32 * 1024  # the hand-off's own floor: what journals and the log keep
    size_factor = 1.5  # MAIL with SIZE=n needs n * this free (Postfix's rule)
    check_every = 64 * 1024  # re-check free space every so many body bytes
    FRESH = 64  # committed ids the hand-off is told of; past that it scans

    def __init__(self, root, clock=None):
        self.root = root
        self.clock = clock or time.time
        self._next = None  # the next id to hand out
        self._limit = 0  # ids below this are reserved in the seq file
        self._slot = 0
        self.drafts = set()  # ids being written: no listing shows them yet
        self._made = set()  # bucket directories known to exist
        self.mailboxes = None  # set by Mailboxes(..., spool): routes mail for one user
        # What the hand-off must look at: the "local" records committed since
        # its last pass (a few ids), or, with rescan, the whole queue (at
        # boot, and when it left something behind). A LAN message that went
        # straight to its mailbox costs no spool scan at all.
        self.fresh = array("I")  # ids as numbers: no string kept per message
        self.rescan = True
        # Bytes the hand-off still has to copy for what was accepted: room
        # the receiver may not give to new mail.
        self.owed = 0

    # --- ids: 8 hex digits from a counter, so sortable and never reused ------
    def _new_id(self):
        if self._next is None:
            if not exists(self.root):
                os.mkdir(self.root)
            self._next = max(self._seq(None), _read().highest(self) + 1)
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
        if not exists(path):
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
        """A sweep of the whole card (host tools, tests): removes every record
        that is not a whole committed message, and progress files without a
        message. -> (kept, removed). The box itself boots with start()."""
        self._made = set()
        kept, removed, top = _read().recover(self)
        # The next id: past the seq file's reservation and, should that file
        # be lost or damaged, past every id on the card.
        self._next = max(self._seq(None), top + 1)
        self._limit = 0
        return kept, removed

    def start(self):
        """At boot: only the spool directory. Records are judged when first
        listed, so this costs the same at 10,000 messages as at none."""
        if not exists(self.root):
            try:
                os.mkdir(self.root)
            except OSError:
                pass  # a full card: made with the first message there is room for
        self._made = set()

    def ids(self, queue, after="", limit=0):
        """Ids of whole records with `queue` pending, oldest first: those
        after `after`, at most `limit` of them (0: all)."""
        return _read().ids(self, queue, after, limit)

    def walk(self, queue, batch=16):
        """Every whole record with `queue` pending, oldest first, listed
        `batch` at a time: a walk of 10,000 waiting holds 16 ids, not a
        list of them all (that would not fit the heap)."""
        after = ""
        while True:
            ids = self.ids(queue, after, batch)
            if not ids:
                return
            after = ids[-1]
            for id in ids:
                yield id

    def envelope(self, id):
        """The record's Envelope (spoolread): its recipients are read from
        the card when asked, the handled ones left out."""
        read = _read()
        return read.Envelope(read.path(self, id))

    def open(self, id, env=None):
        """The message bytes of record id. A caller holding its envelope
        passes it: records are write-once, so path and sizes still hold, and
        the header is not found and parsed again."""
        if env is None:
            read = _read()
            env = read.Envelope(read.path(self, id))
        return Body(env.path, env.hlen, env.size)

    def counts(self):
        """{queue: records} from the names alone: no record is opened."""
        return _read().counts(self)

    def done(self, id, queue, addresses=None, keep=None):
        """Marks `queue`'s recipients of id (those in `addresses`, or all
        but those set in the bitmap `keep`, by Envelope.recipients' index)
        as handled; the record goes once none is left, and its bucket with
        it when that is empty and no longer the one new ids go into."""
        bucket = _read().done(self, id, queue, addresses, keep)
        if bucket and (self._next is None or id[:6] != ("%08x" % self._next)[:6]):
            self.prune(bucket)

    def free_bytes(self):
        try:
            st = os.statvfs(self.root)
        except OSError:  # not made yet: the card it will be on
            st = os.statvfs(self.root[: self.root.rfind("/")] or "/")
        return st[0] * st[4]

    # --- writing ---------------------------------------------------------------
    def room(self, size=0):
        """Whether a message of `size` bytes (0 = not declared) may start."""
        return self.free_bytes() >= max(self.min_free, int(size * self.size_factor)) + self.owed

    def prune(self, d):
        """Removes bucket directory d if it is empty."""
        try:
            os.rmdir(d)
            self._made.discard(d)
        except OSError:
            pass  # not empty yet

    def bucket(self, home, id, width=6):
        """The bucket directory of id under home (named by its first `width`
        digits), made if need be."""
        d = "%s/%s" % (home, id[:width])
        if d not in self._made:  # a stat per message costs time and heap
            if not exists(d):
                os.mkdir(d)
            if len(self._made) > 16:  # a group and a bucket for each of 8 users, and the spool's
                self._made = set()
            self._made.add(d)
        return d

    def begin(self, mail_from, rcpts, size=0):
        if not self.room(size):
            raise SpoolFull("card full")
        ext = ""
        for addr, q in rcpts:
            mark = letter(q)
            if mark not in ext:
                ext = "lo" if ext else mark
        if not ext:
            raise ValueError("no recipients")
        # Mail for one mailbox goes straight there; otherwise the hand-off
        # makes `copies` of it later, and the room for them is kept now.
        owner, copies = self.mailboxes.route(rcpts) if self.mailboxes else (None, 0)
        id = self._new_id()
        d = self.mailboxes.bucket(owner, id, self) if owner else self.bucket(self.root, id)
        header = record_header(id, int(self.clock()), mail_from, rcpts)
        self.drafts.add(id)
        try:
            return Draft(self, id, "%s/%s.%s" % (d, id, "m" if owner else ext), header, copies, owner)
        except OSError:
            self.drafts.discard(id)
            raise


def record_header(id, received, mail_from, rcpts):
    """A record's header, line by line (see Draft)."""
    # Line one has a fixed-width length field, so its own length is known.
    hlen = len(b"%s %06d %s %d\n" % (MAGIC, 0, id.encode(), received)) + len(mail_from.encode()) + 3
    for addr, q in rcpts:
        hlen += len(addr.encode()) + 5  # "R <q> <rcpt>\n"
    return _header(id, received, hlen, mail_from, rcpts)


def _header(id, now, hlen, mail_from, rcpts):
    yield b"%s %06d %s %d\n" % (MAGIC, hlen, id.encode(), now)
    yield b"F %s\n" % mail_from.encode()
    for addr, q in rcpts:
        yield b"R %s %s\n" % (letter(q).encode(), addr.encode())
