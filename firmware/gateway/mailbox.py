# Per-user mailboxes on the card, filled from the spool's "local" queue.
#
# Layout under root (sd_root + "/mail"), one directory per user:
#   <user>/<id>.msg      one message; <id> is the spool id, which is also the
#                        POP3 UIDL (unique, never reused, stable across boots)
#   <user>/seen.<n>      duplicate index for period n (fixed 64-byte records)
#   <user>/dele          POP3 UPDATE journal: the ids being deleted
#
# A message file is self-validating, like a Postfix queue file: a header line
# names the id, a trailer after the body repeats the id and the body length,
# and a file whose size does not add up is a partial write. FAT is not safe
# against power loss and its rename is no atomic commit, so nothing here
# relies on rename: the file is written in place under its final name, made
# durable, and only then is the spool told `done`. A crash before that leaves
# the spool record pending, and the next pass either finds the file whole
# (skip) or finds it partial (rewrite). Nothing lost, nothing doubled.
import hashlib
import os

from gateway import log
from gateway.compat import const, fsync, ilistdir
from gateway.spool import _exists, _remove

_CHUNK = const(512)
_REC = const(64)  # one seen record: 32 hex key, space, id padded to 30, LF
_TAIL = const(96)  # enough to hold the trailer


def _mkdir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass


class BodyLines:
    """Lines of a stored message, as memoryview pieces of a fixed buffer.
    A line longer than the buffer comes in several pieces; `.start` says
    whether the piece just returned begins a line (for dot-stuffing)."""

    def __init__(self, f, length, buf):
        self.f = f
        self.left = length
        self.buf = buf
        self.mv = memoryview(buf)
        self.a = self.b = 0
        self.start = True
        self._next_start = True

    def piece(self):
        self.start = self._next_start
        i = self.buf.find(b"\n", self.a, self.b)
        if i < 0 and self.left:
            if self.a:
                n = self.b - self.a
                self.mv[:n] = self.mv[self.a : self.b]
                self.a, self.b = 0, n
            want = min(len(self.buf) - self.b, self.left)
            if want:
                got = self.f.readinto(self.mv[self.b : self.b + want])
                if not got:
                    self.left = 0
                else:
                    self.b += got
                    self.left -= got
            i = self.buf.find(b"\n", self.a, self.b)
        end = i + 1 if i >= 0 else self.b
        piece = self.mv[self.a : end]
        self.a = end
        self._next_start = i >= 0
        return piece

    def close(self):
        self.f.close()


class Mailboxes:
    """Every user's mailbox. Registers itself with the policy so quota checks
    at RCPT see what is stored. With policy None the store is only read (the
    `sd export` tool): no registration, no recovery."""

    # A provider re-send after a lost 250 comes back with a new spool id but
    # the same Message-ID and body; it is dropped when seen within this time.
    DEDUPE_WINDOW = 2 * 86400
    # A POP3 session lists at most this many (oldest first); the rest show
    # up once those are deleted. Keeps the per-session listing small.
    MAX_LISTED = 300
    # The hand-off takes this many spool ids at a time (see _batch).
    BATCH = 16

    def __init__(self, root, policy):
        self.root = root
        self.policy = policy
        self.buf = bytearray(_CHUNK)
        self.mv = memoryview(self.buf)
        self._usage = {}
        self._locked = set()
        self._kept = set()  # (id, address) the forward host refused
        if policy is None:
            return
        policy.mailboxes = self
        _mkdir(root)
        for user in policy.users:
            _mkdir(self._dir(user))
            self.recover(user)

    def _dir(self, user):
        return self.root + "/" + user

    def _path(self, user, id):
        return "%s/%s/%s.msg" % (self.root, user, id)

    # --- the message file --------------------------------------------------

    def _header(self, f):
        """(id, received, key, header length) from a message file's first
        line, or None."""
        n = f.readinto(self.buf)
        line_end = self.buf.find(b"\n", 0, n)
        if line_end < 0:
            return None
        parts = bytes(self.buf[:line_end]).split(b" ")
        if len(parts) != 4 or parts[0] != b"ODMB1" or not parts[2].isdigit():
            return None
        return parts[1].decode(), int(parts[2]), parts[3].decode(), line_end + 1

    def info(self, user, id):
        """(body offset, body length, received, dedupe key) of a whole
        message, or None when the file is missing or a partial write."""
        try:
            f = open(self._path(user, id), "rb")
        except OSError:
            return None
        try:
            head = self._header(f)
            if not head or head[0] != id:
                return None
            size = f.seek(0, 2)
            tail = min(size, _TAIL)
            f.seek(size - tail)
            n = f.readinto(self.mv[:tail])
            t = bytes(self.buf[:n])
            i = t.rfind(b"\0ODME ")
            if i < 0 or t[-1:] != b"\n":
                return None
            parts = t[i + 6 : -1].split(b" ")
            if len(parts) != 2 or parts[1].decode() != id or not parts[0].isdigit():
                return None
            body = int(parts[0])
            if head[3] + body + (n - i) != size:
                return None
            return head[3], body, head[1], head[2]
        finally:
            f.close()

    def _write(self, user, id, env, key, spool):
        ret = ("Return-Path: <%s>\r\n" % env.mail_from).encode()
        with open(self._path(user, id), "wb") as f:
            f.write(("ODMB1 %s %d %s\n" % (id, env.received, key or "-")).encode())
            f.write(ret)
            n = len(ret)
            with spool.open(id, env) as body:
                while True:
                    k = body.readinto(self.buf)
                    if not k:
                        break
                    f.write(self.mv[:k])
                    n += k
            f.write(("\0ODME %d %s\n" % (n, id)).encode())
            fsync(f)
            total = f.tell()
        u = self._usage.get(user)
        if u:
            self._usage[user] = (u[0] + 1, u[1] + total)
        return n

    def open_body(self, user, id, buf):
        """BodyLines over a stored message; None if it has gone."""
        info = self.info(user, id)
        if not info:
            return None
        f = open(self._path(user, id), "rb")
        f.seek(info[0])
        return BodyLines(f, info[1], buf)

    # --- duplicate suppression ----------------------------------------------
    # Key: sha256 over the Message-ID and the body (everything after the
    # header block, so our own Received: line, new on each re-send, does not
    # count). Messages without a Message-ID are never suppressed. The index is
    # per user, on the card, in one append-only file per DEDUPE_WINDOW period;
    # a lookup reads this period and the last, older files are deleted. A
    # record is written before the message file, so after a crash the retry
    # finds its own record (same id: carry on) and a re-send finds the first
    # copy's (other id: duplicate).

    def _key(self, spool, env):
        msgid = None
        h = hashlib.sha256()
        in_head = True
        with spool.open(env.id, env) as body:
            pending = b""
            while True:
                n = body.readinto(self.buf)
                if not n:
                    break
                if not in_head:
                    h.update(self.mv[:n])
                    continue
                data = pending + bytes(self.mv[:n])
                pending = b""
                pos = 0
                while in_head:
                    i = data.find(b"\n", pos)
                    if i < 0:
                        pending = data[pos : pos + 1000]
                        break
                    line = data[pos:i].rstrip(b"\r")
                    if not line:
                        in_head = False
                        h.update(data[i + 1 :])
                    elif msgid is None and line[:11].lower() == b"message-id:":
                        msgid = line[11:].strip()
                    pos = i + 1
        if not msgid:
            return None
        h.update(b"\0" + msgid)
        return h.digest()[:16].hex()

    def _seen_path(self, user, period):
        return "%s/%s/seen.%d" % (self.root, user, period)

    def _seen(self, user, key, id, period):
        """The id recorded for key in this or the last period, else None."""
        want = key.encode()
        for p in (period, period - 1):
            try:
                f = open(self._seen_path(user, p), "rb")
            except OSError:
                continue
            with f:
                while True:
                    n = f.readinto(self.mv[:_REC])
                    if n < _REC:
                        break
                    if self.buf[_REC - 1] == 10 and bytes(self.mv[:32]) == want:
                        return bytes(self.mv[33 : _REC - 1]).decode().strip()
        return None

    def _remember(self, user, key, id, period):
        path = self._seen_path(user, period)
        try:
            size = os.stat(path)[6]
        except OSError:
            size = -1
        # A torn last record (power cut) is overwritten, keeping records aligned.
        with open(path, "r+b" if size >= 0 else "wb") as f:
            f.seek(max(size, 0) - max(size, 0) % _REC)
            f.write(("%s %-30s\n" % (key, id[:30])).encode())
            fsync(f)
        for entry in ilistdir(self._dir(user)):
            name = entry[0]
            if name[:5] == "seen." and name[5:].isdigit() and int(name[5:]) < period - 1:
                _remove(self._dir(user) + "/" + name)

    # --- delivery -------------------------------------------------------------

    def deliver_pending(self, spool):
        """Moves every message of the spool's "local" queue into mailboxes;
        returns how many spool messages were completed. Idempotent: safe to
        call again after a crash at any point. Recipients that map to no user
        (the config changed since the 250) stay pending in the spool, and so
        do those with a forward target until gateway.forward has sent them."""
        count = 0
        forwards = False
        after = ""  # ids are sortable by arrival; a pass never looks back
        while True:
            batch = self._batch(spool, after)
            if not batch:
                break
            after = batch[-1]
            for id in batch:
                n, f = self._deliver_id(spool, id)
                count += n
                forwards = forwards or f
        if forwards:
            self.policy.forwarder().kick(spool)
        return count

    def _batch(self, spool, after):
        """The next BATCH pending ids after `after`. The spool lists every
        pending id at once; that list is dropped before any delivery, so a
        hand-off of 1000 messages never holds it while it writes files."""
        ids = spool.ids("local")
        batch = [None] * self.BATCH
        n = 0
        for id in ids:
            if id > after:
                batch[n] = id
                n += 1
                if n == self.BATCH:
                    break
        del ids
        return batch[:n] if n < self.BATCH else batch

    def _deliver_id(self, spool, id):
        """(1 if the spool record was completed else 0, forwards pending)."""
        forwards = False
        env = spool.envelope(id)
        served = 0
        left = None  # the local recipients not served here, if any: mostly none,
        users = []  # so 100 served ones never need a list of their own
        for addr, queue in env.rcpts:
            if queue != "local":
                continue
            if self.policy.forward_for(addr) and not self.kept_here(id, addr):
                forwards = True  # gateway.forward's job
                left = (left or []) + [addr]
                continue
            user = self.policy.user_for(addr)
            if user is None or user not in self.policy.users:
                log.warn("mailbox: no user for <%s> in %s, left in the spool" % (addr, id))
                left = (left or []) + [addr]
                continue
            served += 1
            if user not in users:
                users.append(user)
        if not served:
            return 0, forwards
        key = self._key(spool, env)
        for user in users:
            self._deliver_one(user, id, env, key, spool)
        spool.done(id, "local", None if left is None else [a for a, q in env.rcpts if q == "local" and a not in left])
        return 1, forwards

    def keep_here(self, id, address):
        """The forward host refused this recipient: deliver to the mailbox."""
        self._kept.add((id, address))

    def kept_here(self, id, address):
        return (id, address) in self._kept

    def _deliver_one(self, user, id, env, key, spool):
        _mkdir(self._dir(user))
        if self.info(user, id):
            return
        if key:
            period = env.received // self.DEDUPE_WINDOW
            first = self._seen(user, key, id, period)
            if first and first != id[:30]:
                log.info("mailbox: %s for %s is a re-send of %s, dropped" % (id, user, first))
                return
            if not first:
                self._remember(user, key, id, period)
        n = self._write(user, id, env, key, spool)
        log.info("mailbox: %s delivered to %s (%d bytes)" % (id, user, n))

    # --- POP3 side ------------------------------------------------------------

    def lock(self, user):
        """One POP3 session per mailbox: False when it is already held."""
        if user in self._locked:
            return False
        self._locked.add(user)
        return True

    def unlock(self, user):
        self._locked.discard(user)

    def ids(self, user):
        """Ids of the message files in a mailbox, oldest first."""
        ids = []
        try:
            for entry in ilistdir(self._dir(user)):
                name = entry[0]
                if name[-4:] == ".msg":
                    ids.append(name[:-4])
        except OSError:
            return []
        ids.sort()
        return ids

    def listing(self, user):
        """[(id, size)] of whole messages, oldest first, at most MAX_LISTED."""
        out = []
        for id in self.ids(user):
            info = self.info(user, id)
            if info:
                out.append((id, info[1]))
                if len(out) >= self.MAX_LISTED:
                    break
        return out

    def expunge(self, user, ids):
        """POP3 UPDATE: deletes all of ids or, after a crash, none or all of
        them (never some). The journal is written and made durable first;
        recover() finishes a whole journal and drops a torn one."""
        if not ids:
            return
        path = self._dir(user) + "/dele"
        with open(path, "wb") as f:
            for id in ids:
                f.write(id.encode() + b"\n")
            f.write(b"END\n")
            fsync(f)
        self._apply_journal(user, path)

    def _apply_journal(self, user, path):
        with open(path, "rb") as f:
            pending = b""
            while True:
                n = f.readinto(self.buf)
                if not n:
                    break
                data = pending + bytes(self.mv[:n])
                lines = data.split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if line and line != b"END":
                        _remove(self._path(user, line.decode()))
        _remove(path)
        self._usage.pop(user, None)

    def _journal_whole(self, path):
        try:
            size = os.stat(path)[6]
        except OSError:
            return False
        with open(path, "rb") as f:
            f.seek(max(0, size - 4))
            return f.read(4) == b"END\n"

    def recover(self, user):
        """At boot: finish or drop an UPDATE journal, remove partial message
        files (their spool record is still pending, so they are redelivered)."""
        path = self._dir(user) + "/dele"
        if _exists(path):
            if self._journal_whole(path):
                log.warn("mailbox: finishing an interrupted POP3 update for %s" % user)
                self._apply_journal(user, path)
            else:
                _remove(path)
        for id in self.ids(user):
            if not self.info(user, id):
                log.warn("mailbox: removing partial %s of %s" % (id, user))
                _remove(self._path(user, id))

    # --- figures ----------------------------------------------------------------

    def usage(self, user):
        """(messages, bytes) stored for user."""
        u = self._usage.get(user)
        if u is None:
            n = total = 0
            try:
                for entry in ilistdir(self._dir(user)):
                    if entry[0][-4:] == ".msg":
                        n += 1
                        total += os.stat(self._dir(user) + "/" + entry[0])[6]
            except OSError:
                pass
            u = self._usage[user] = (n, total)
        return u

    def used(self, user):
        return self.usage(user)[1]

    def counts(self):
        return {user: self.usage(user) for user in self.policy.users}

    def users_on_card(self):
        """Every mailbox directory, configured user or not."""
        try:
            return sorted(e[0] for e in ilistdir(self.root) if e[1] & 0x4000)
        except OSError:
            return []
