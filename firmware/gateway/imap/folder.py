# The selected folder of one IMAP session: the mailbox's oldest messages as
# POP3 lists them (Mailboxes.listing: at most MAX_LISTED), 9 bytes each with
# the flag byte, in arrays made at their full size at SELECT with room for
# NEW_ROOM more to arrive meanwhile; and the folder's UIDVALIDITY and UIDNEXT.
#
# A message's UID is its spool id, the number POP3's UIDL shows in hex, so
# both protocols name a message alike, and EXPUNGE goes through the same
# deletion journal as POP3's DELE. On the card, under <user>/imap/:
#   state           UIDVALIDITY, UIDNEXT (gateway.imap.slots)
#   <bucket>.flg    one flag byte for each of the bucket's 256 ids (slots)
# Ids are never reused, so a byte left behind by a deletion is never read
# for another message.
#
# UIDs must grow: a message shown must have a UID above every UID shown
# before it. A spool id is taken when a message starts to arrive, so one
# that took long (or waited in the spool for its hand-off) can land below
# the UIDNEXT a client was told. Each message shown is marked (ANNOUNCED);
# an unmarked one below UIDNEXT at SELECT starts a new UIDVALIDITY, and the
# clients fetch the folder afresh rather than miss it.
from array import array

from gateway.compat import const
from gateway.imap import slots

SEEN = const(1)
ANSWERED = const(2)
FLAGGED = const(4)
DELETED = const(8)
DRAFT = const(16)
ANNOUNCED = const(128)
NAMES = ((SEEN, "\\Seen"), (ANSWERED, "\\Answered"), (FLAGGED, "\\Flagged"), (DELETED, "\\Deleted"), (DRAFT, "\\Draft"))
_STATE = const(32)


def flag_names(bits):
    return " ".join(name for bit, name in NAMES if bits & bit)


def flag_bits(names):
    """The system flags named; keywords are not kept (PERMANENTFLAGS)."""
    bits = 0
    for name in names:
        name = name.upper() if isinstance(name, str) else ""
        for bit, known in NAMES:
            if name == known.upper():
                bits |= bit
    return bits


class Folder:
    NEW_ROOM = 32  # messages a session shows as they arrive; more wait for the next SELECT

    def __init__(self, boxes, user, readonly, clock):
        self.boxes = boxes
        self.user = user
        self.readonly = readonly
        self.dir = boxes.home(user) + "/imap"
        got = boxes.listing(user)
        self.n = len(got)
        room = min(self.n + self.NEW_ROOM, max(self.n, boxes.MAX_LISTED))
        self.ids = array("I", bytes(4 * room))
        self.sizes = array("I", bytes(4 * room))
        self.flags = bytearray(room)
        for i in range(self.n):
            self.ids[i] = got.ids[i]
            self.sizes[i] = got.sizes[i]
        got = None
        self._load_flags(0)
        st = bytearray(_STATE)
        self._gen = slots.read(self.dir + "/state", st)
        self.uidvalidity, uidnext = _pair(st)
        top = self.ids[self.n - 1] + 1 if self.n else 1
        late = any(self.ids[i] < uidnext and not self.flags[i] & ANNOUNCED for i in range(self.n))
        if not self.uidvalidity or late:
            self.uidvalidity = max(self.uidvalidity + 1, int(clock()) & 0x7FFFFFFF)
        self.uidnext = max(uidnext, top)
        if (self.uidvalidity, self.uidnext) != _pair(st):
            slots.mkdir(self.dir)
            self._gen = slots.write(self.dir + "/state", b"%08x%08x" % (self.uidvalidity, self.uidnext) + bytes(16),
                                    self._gen)
        self._announce(0)

    def __len__(self):
        return self.n

    def uid(self, i):
        return self.ids[i]

    def size(self, i):
        return self.sizes[i]

    def index(self, uid):
        """The index of the message with this UID, or -1."""
        i = self._first_at_least(uid)
        return i if i < self.n and self.ids[i] == uid else -1

    def pick(self, ranges, by_uid):
        """A mark per message (bytearray) for a parsed sequence set."""
        marks = bytearray(self.n)
        ids = self.ids
        for lo, hi in ranges:
            if by_uid:
                i = self._first_at_least(lo)
                while i < self.n and ids[i] <= hi:
                    marks[i] = 1
                    i += 1
            else:
                for i in range(max(lo, 1) - 1, min(hi, self.n)):
                    marks[i] = 1
        return marks

    def _first_at_least(self, uid):
        ids = self.ids
        lo, hi = 0, self.n
        while lo < hi:
            mid = (lo + hi) // 2
            if ids[mid] < uid:
                lo = mid + 1
            else:
                hi = mid
        return lo

    # --- flags on the card --------------------------------------------------------
    def _runs(self, start, marks=None):
        """(bucket, first index, end index) of the listed messages from
        start on (those marked, with marks), one run per bucket."""
        ids = self.ids
        i = start
        while i < self.n:
            b = ids[i] >> 8
            j = i
            while j < self.n and ids[j] >> 8 == b:
                j += 1
            if marks is None or any(marks[i:j]):
                yield "%06x" % b, i, j
            i = j

    def _load_flags(self, start):
        page = bytearray(256)
        for bucket, i, j in self._runs(start):
            slots.read("%s/%s.flg" % (self.dir, bucket), page)
            for k in range(i, j):
                self.flags[k] = page[self.ids[k] & 255]

    def _save(self, marks):
        """The flags of the marked messages, bucket by bucket; each bucket's
        file holds its old bytes or its new ones after a power cut."""
        slots.mkdir(self.dir)
        page = bytearray(256)
        for bucket, i, j in self._runs(0, marks):
            path = "%s/%s.flg" % (self.dir, bucket)
            gen = slots.read(path, page)
            for k in range(i, j):
                page[self.ids[k] & 255] = self.flags[k]
            slots.write(path, page, gen)

    def _announce(self, start):
        marks = bytearray(self.n)
        for i in range(start, self.n):
            if not self.flags[i] & ANNOUNCED:
                self.flags[i] |= ANNOUNCED
                marks[i] = 1
        if any(marks):
            self._save(marks)

    def store(self, marks, mode, bits):
        """+FLAGS (mode 1), -FLAGS (-1) or FLAGS (0) on the marked messages;
        saved before this returns. Marks stay only where a flag changed."""
        for i in range(len(marks)):
            if marks[i]:
                old = self.flags[i]
                new = old | bits if mode > 0 else old & ~bits if mode < 0 else old & ANNOUNCED | bits
                self.flags[i] = new
                marks[i] = new != old
        if any(marks):
            self._save(marks)

    def seen(self, i):
        """Sets \\Seen on message i (a FETCH of its body); True if it changed."""
        if self.readonly or self.flags[i] & SEEN:
            return False
        marks = bytearray(self.n)
        marks[i] = 1
        self.store(marks, 1, SEEN)
        return True

    # --- what changes --------------------------------------------------------------
    def expunge(self, marks=None):
        """Deletes the \\Deleted messages (those marked too, with marks) in
        one journal, as POP3's QUIT does. The sequence numbers gone,
        highest first, as EXPUNGE responses must come."""
        gone = [i for i in range(self.n) if self.flags[i] & DELETED and (marks is None or marks[i])]
        if gone:
            self.boxes.expunge(self.user, ("%08x" % self.ids[i] for i in gone))
            self._drop(gone)
        return [i + 1 for i in reversed(gone)]

    def _drop(self, gone):
        """Closes the gaps of the indexes gone (ascending), in place."""
        j = k = 0
        for i in range(self.n):
            if k < len(gone) and gone[k] == i:
                k += 1
                continue
            self.ids[j], self.sizes[j], self.flags[j] = self.ids[i], self.sizes[i], self.flags[i]
            j += 1
        self.n = j

    def rescan(self):
        """What others did since the last look (another session, POP3, new
        mail): (sequence numbers expunged, highest first; indexes whose
        flags changed; whether new messages came). Reads directory entries,
        and only the new messages' records."""
        boxes = self.boxes
        present = bytearray(self.n)
        new = []
        top = self.ids[self.n - 1] if self.n else -1
        room = len(self.ids) - self.n
        for id in boxes.each(self.user):
            uid = int(id, 16)
            if uid > top:
                if len(new) >= room:
                    break
                if uid >= self.uidnext:  # one below arrived late: the next SELECT's
                    new.append(uid)
            else:
                i = self.index(uid)
                if i >= 0:
                    present[i] = 1
        gone = [i for i in range(self.n) if not present[i]]
        self._drop(gone)
        old = bytes(self.flags[: self.n])
        self._load_flags(0)
        changed = [i for i in range(len(old)) if old[i] != self.flags[i]]
        start = self.n
        for uid in new:
            info = boxes.info(self.user, "%08x" % uid)
            if info:
                self.ids[self.n], self.sizes[self.n], self.flags[self.n] = uid, len(info[3]) + info[1], 0
                self.n += 1
        if self.n > start:
            self._load_flags(start)
            self._announce(start)
            if self.ids[self.n - 1] >= self.uidnext:
                self.uidnext = self.ids[self.n - 1] + 1
                self._gen = slots.write(self.dir + "/state", b"%08x%08x" % (self.uidvalidity, self.uidnext) + bytes(16),
                                        self._gen)
        return [i + 1 for i in reversed(gone)], changed, self.n > start


def _pair(st):
    try:
        return int(bytes(st[:8]), 16), int(bytes(st[8:16]), 16)
    except ValueError:
        return 0, 1
