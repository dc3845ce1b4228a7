# Duplicate suppression. A provider that lost our 250 sends the message again,
# under a new spool id but with the same Message-ID and body: each user keeps
# the first copy it got within WINDOW seconds.
#
# The key: sha256 over the body (everything after the header block, so our
# own Received: line, new on each re-send, does not count) and the
# Message-ID. Mail without a Message-ID is never suppressed.
#
# The index: one file per user (<user>/seen), a table of SLOTS records of 32
# bytes (key 16, id 8, received 4, crc32 4), open-addressed by the key: a
# key lives in one of PROBE neighbouring slots, so a lookup reads one or two
# sectors whatever the mail held, and a record older than WINDOW counts as
# free. The table is made at boot, while there is room. New records wait in RAM (at most PENDING) and flush() writes them
# together, so a run of messages costs one sync, not one each: the app
# flushes every few seconds and at shutdown. A record lost in a power cut
# costs at most one duplicate, never a message (at-least-once).
import binascii
import hashlib

from gateway.compat import const

_REC = const(32)
_KEY = const(16)
_ID = const(8)  # spool ids are 8 hex digits
LINE = const(256)  # what key() keeps of a header line: a longer Message-ID line is not looked at
_SPACE = b" \t\r\n\x0b\x0c"  # what bytes.strip() takes off


def key(body, buf, line):
    """The message's key (16 bytes), or None without a Message-ID. Reads
    body (a spool Body) through buf; the first len(line) bytes of each
    header line are copied into `line` for a look, and no byte string is
    made of what the sender wrote: the old joins and slices of a 2 KB
    folded To: header took blocks of 513 bytes and more that a heap cut up
    by the day's sessions did not have. A Message-ID line longer than
    `line` gives None too: such mail is not suppressed (a duplicate at
    worst, never a loss). A blank line is an empty one or a lone CR (the
    receiver takes no other bare CR)."""
    mv = memoryview(buf)
    lv = memoryview(line)
    room = len(line)
    h = hashlib.sha256()
    head = True
    k = 0  # bytes of the header line being read, so far
    first = 0  # its first byte
    found = -1  # the length of the Message-ID line in `line`, once found (-2: longer)
    while True:
        n = body.readinto(buf)
        if not n:
            break
        if not head:
            h.update(mv[:n])
            continue
        pos = 0
        while pos < n:
            i = buf.find(b"\n", pos, n)
            end = n if i < 0 else i
            if k == 0 and end > pos:
                first = buf[pos]
            m = min(end - pos, room - k) if found == -1 else 0
            if m > 0:
                lv[k : k + m] = mv[pos : pos + m]
            k += end - pos
            if i < 0:
                break
            pos = i + 1
            if k == 0 or k == 1 and first == 13:
                head = False
                h.update(mv[pos:n])
                break
            if found == -1 and k >= 11 and bytes(lv[:11]).lower() == b"message-id:":
                found = k if k <= room else -2
            k = 0
    if found < 0:
        return None
    a, b = 11, found
    while a < b and lv[a] in _SPACE:
        a += 1
    while b > a and lv[b - 1] in _SPACE:
        b -= 1
    if a == b:
        return None
    h.update(b"\0")
    h.update(lv[a:b])
    return h.digest()[:_KEY]


def _crc(rec):
    return binascii.crc32(rec[: _REC - 4]).to_bytes(4, "little")


def _time(rec):
    return int.from_bytes(bytes(rec[_KEY + _ID : _REC - 4]), "little")


def _id(rec):
    return bytes(rec[_KEY : _KEY + _ID]).rstrip()


class Seen:
    WINDOW = 2 * 86400
    SLOTS = 4096  # 128 KB per user: two days of about 3,000 messages
    PROBE = 8
    PENDING = 16
    OLD = "seen."  # the index files of earlier releases, replaced by the table

    def __init__(self, buf):
        self.buf = buf  # at least PROBE * 32 bytes, shared with the mailbox
        self.mv = memoryview(buf)
        self.waiting = bytearray(self.PENDING * _REC)
        self.wv = memoryview(self.waiting)
        self.paths = []  # the index file of each waiting record
        self.line = bytearray(LINE)  # key()'s look at a header line

    def key(self, body):
        """key() of the message, through the mailbox's buffer."""
        return key(body, self.buf, self.line)

    def first(self, path, key, id, received):
        """False when key is on record for another id within the window (a
        re-send); otherwise key is recorded for id."""
        got = self._find(path, key, received)
        if got is not None:
            return got == id[:_ID].encode()  # the same id: a retry after a crash
        rec = self._waiting(len(self.paths))
        rec[:_KEY] = key
        rec[_KEY : _KEY + _ID] = ("%-8s" % id[:_ID]).encode()
        rec[_KEY + _ID : _KEY + _ID + 4] = int(received).to_bytes(4, "little")
        rec[_REC - 4 :] = _crc(rec)
        self.paths.append(path)
        if len(self.paths) == self.PENDING:
            self.flush()
        return True

    def _start(self, key):
        return int.from_bytes(key[:4], "little") % (self.SLOTS - self.PROBE + 1)

    def _live(self, rec, now):
        return bytes(rec[_REC - 4 :]) == _crc(rec) and now - _time(rec) < self.WINDOW

    def _find(self, path, key, now):
        """The id (bytes) key is on record for, else None."""
        for i in range(len(self.paths)):
            if self.paths[i] == path:
                rec = self._waiting(i)
                if bytes(rec[:_KEY]) == key and self._live(rec, now):
                    return _id(rec)
        try:
            f = open(path, "rb")
        except OSError:
            return None
        with f:
            self._read(f, key)
        for i in range(self.PROBE):
            rec = self._slot(i)
            if bytes(rec[:_KEY]) == key and self._live(rec, now):
                return _id(rec)
        return None

    def _read(self, f, key):
        f.seek(self._start(key) * _REC)
        if f.readinto(self.mv[: self.PROBE * _REC]) != self.PROBE * _REC:
            raise OSError(5)  # a table cut short: it is made whole again

    def _slot(self, i):
        return self.mv[i * _REC : (i + 1) * _REC]

    def _waiting(self, i):
        return self.wv[i * _REC : (i + 1) * _REC]

    def flush(self):
        """Writes the waiting records, one open and one sync per user. A
        failure (a full card) drops them: mail stays, unsuppressed."""
        while self.paths:
            path = self.paths[0]
            try:
                self._write(path)
            except OSError:
                pass
            self._drop(path)

    def _drop(self, path):
        keep = 0
        for i in range(len(self.paths)):
            if self.paths[i] != path:
                self.wv[keep * _REC : (keep + 1) * _REC] = self._waiting(i)
                self.paths[keep] = self.paths[i]
                keep += 1
        del self.paths[keep:]

    def _write(self, path):
        with open(path, "r+b") as f:  # no table (no room at boot): not recorded
            for i in range(len(self.paths)):
                if self.paths[i] == path:
                    self._put(f, self._waiting(i))

    def _put(self, f, rec):
        """Into the first free slot of the key's, else over the oldest."""
        key = bytes(rec[:_KEY])
        now = _time(rec)
        try:
            self._read(f, key)
        except OSError:
            return  # a table cut short (power cut at its making): this record is lost
        best, oldest = 0, None
        for i in range(self.PROBE):
            slot = self._slot(i)
            if not self._live(slot, now) or bytes(slot[:_KEY]) == key:
                best = i
                break
            t = _time(slot)
            if oldest is None or t < oldest:
                best, oldest = i, t
        f.seek((self._start(key) + best) * _REC)
        f.write(rec)

    def make(self, path):
        """The table, made once while there is room (at boot, like the
        mailbox's journal): zeroed, and zeros fail the crc, so every slot is
        free. The index files of earlier releases in its directory go."""
        import os

        try:
            if os.stat(path)[6] == self.SLOTS * _REC:
                return
        except OSError:
            pass
        try:
            with open(path, "wb") as f:
                zero = bytes(512)
                left = self.SLOTS * _REC
                while left:
                    left -= f.write(zero[: min(left, 512)])
        except OSError:
            try:
                os.remove(path)  # a table cut short by a full card is no table
            except OSError:
                pass
            raise
        from gateway.record import Scan

        # Entry by entry: a mailbox of the first layout holds every message
        # in this directory, and a list of 10,000 names would not fit.
        d = path[: path.rfind("/")]
        with Scan(d) as entries:
            old = [e[0] for e in entries if e[0].startswith(self.OLD)]
        for name in old:
            os.remove(d + "/" + name)
