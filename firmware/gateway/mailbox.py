# Per-user mailboxes on the card.
#
# Layout under root (sd_root + "/mail"), one directory per user:
#   <user>/<group>/<bucket>/<id>.m
#                            one message: a spool record (format: spool.py),
#                            256 ids to a bucket (<id[:6]>) like the spool,
#                            16 buckets to a group (<id[:5]>), so no FAT
#                            directory a message's path goes through grows
#                            with the mailbox: at 10,000 the user's directory
#                            holds 3 groups, not 40 buckets. <id> is the
#                            spool id, which is also the POP3 UIDL (unique,
#                            never reused, stable across boots)
#   <user>/seen              duplicate index, a table of fixed slots (gateway.dedupe)
#   <user>/journal           POP3 UPDATE journal, made with the mailbox and
#                            rewritten in place: a full card still has its room
#
# Mail for exactly one mailbox is written there by the receiver itself
# (route(), Spool.begin): the record's commit is the delivery, so the message
# is stored once and the LAN path costs the commit and the dedupe record.
# Anything else (several users, a forward that fell back, a config change
# since the 250) waits in the spool's "local" queue and the hand-off
# (deliver_pending) copies it in as the same kind of record, then marks the
# spool `done`. FAT's rename is no atomic commit, so nothing relies on it: a
# copy is written under its final name and judged by its trailer, and a crash
# before `done` finds it whole (skip) or cut short (rewrite). Nothing lost,
# nothing doubled. Boot reads no message: a record is judged when a POP3
# listing first reaches it, and one cut short by a power cut is removed then.
# Mailboxes of older firmware (<user>/<id>.msg, <user>/<bucket>/<id>.m) are
# found at boot and moved into this layout by gateway.migrate.
import binascii
import os
from array import array

from gateway import dedupe, log
from gateway.compat import const, drop_modules, fsync
from gateway.record import MAGIC, TRAILER, Scan, buckets, exists, mkdir, remove
from gateway.spool import Body

_CHUNK = const(512)
_PAGE = const(64)  # items in a page of Pages: 256 bytes
_GROUP = const(5)  # a group directory: the ids' first 5 digits, 16 buckets
_ID_LINE = const(9)  # one journal line: 8 hex digits and LF
_EMPTY = b"DELE 0000 00000000\n"  # the journal's head when nothing is pending


class BodyLines:
    """Lines of a stored message, as memoryview pieces of a fixed buffer.
    A line longer than the buffer comes in several pieces; `.start` says
    whether the piece just returned begins a line (for dot-stuffing).
    `prefix` (the Return-Path line) comes first, as a piece of its own."""

    def __init__(self, f, length, buf, prefix=b""):
        self.f = f
        self.left = length
        self.buf = buf
        self.mv = memoryview(buf)
        self.a = self.b = 0
        self.start = True
        self._next_start = True
        self.prefix = prefix

    def piece(self):
        self.start = self._next_start
        if self.prefix:
            piece, self.prefix = memoryview(self.prefix), None
            return piece
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


class Pages:
    """A fixed number of unsigned 32-bit items, as array("I") holds them,
    in pages of 64: the same bytes as one array, in blocks that a heap cut
    up by the day's sessions still has (the office day refused POP3 logins
    by the dozen for want of two 1,216-byte blocks, 15 KB free)."""

    def __init__(self, n):
        self.n = n
        self.pages = [array("I", range(min(_PAGE, n - i))) for i in range(0, n, _PAGE)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.pages[i // _PAGE][i % _PAGE]

    def __setitem__(self, i, v):
        self.pages[i // _PAGE][i % _PAGE] = v


class Listing:
    """What one POP3 session shows: ids and sizes, 8 bytes a message,
    oldest first, made at their full size at once: a listing grown message
    by message on a heap cut up by the day's sessions failed half-way for
    want of one 1,152-byte block with 30 KB free."""

    def __init__(self, capacity):
        self.ids = Pages(capacity)
        self.sizes = Pages(capacity)
        self.n = 0

    def __len__(self):
        return self.n

    def add(self, id, size):
        self.ids[self.n] = id
        self.sizes[self.n] = size
        self.n += 1

    def uid(self, i):
        return "%08x" % self.ids[i]

    def size(self, i):
        return self.sizes[i]


class Mailboxes:
    """Every user's mailbox. Registers itself with the policy so quota checks
    at RCPT see what is stored, and with the spool (when given) so mail for
    one user is written straight into that mailbox. With policy None the
    store is only read (the `sd export` tool): no registration, no recovery."""

    # A POP3 session lists at most this many (oldest first); the rest show
    # up once those are deleted. Keeps the per-session listing small.
    MAX_LISTED = 300
    # The hand-off takes this many spool ids at a time.
    BATCH = 16

    def __init__(self, root, policy, spool=None):
        self.root = root
        self.policy = policy
        self.spool = spool
        self.buf = bytearray(_CHUNK)
        self.mv = memoryview(self.buf)
        self.seen = dedupe.Seen(self.buf)
        self._usage = {}
        self._locked = set()
        self._kept = set()  # (id, address) the forward host refused
        self.waiting = False  # the hand-off stopped for want of room
        self.on_forward = None  # on_forward(spool): mail waits for gateway.forward (the App wires it)
        self.legacy = set()  # users whose directory holds older firmware's mail
        # Records the receiver is still writing: not cut short, not shown.
        self._drafts = spool.drafts if spool is not None else ()
        if policy is None:
            return
        policy.mailboxes = self
        if spool is not None:
            spool.mailboxes = self
        mkdir(root)
        for user in policy.users:
            mkdir(self._dir(user))
            self.recover(user)

    def _dir(self, user):
        return self.root + "/" + user

    home = _dir  # a user's directory, where the IMAP store keeps its state

    def _path(self, user, id):
        return "%s/%s/%s/%s/%s.m" % (self.root, user, id[:_GROUP], id[:6], id)

    def bucket(self, user, id, spool):
        """The directory a new record id of user's goes in, made if need be
        (spool.bucket keeps the few it made)."""
        return spool.bucket(spool.bucket(self._dir(user), id, _GROUP), id)

    def _buckets(self, user):
        """(path, name) of every bucket directory of user's, oldest first."""
        for g in buckets(self._dir(user), _GROUP):
            d = self._dir(user) + "/" + g
            for b in buckets(d):
                yield d + "/" + b, b

    # --- the message file --------------------------------------------------

    def info(self, user, id, keep=False):
        """(body offset, body length, received, Return-Path line) of a whole
        message; None when it is missing or was cut short (its header or
        trailer does not sum right). Raises OSError when it cannot be read.
        With keep, (that, the message's file, open) for a reader that goes
        on: one open of the file, whose name FAT finds by searching its
        bucket directory."""
        try:
            f = open(self._path(user, id), "rb")
        except OSError:
            return None
        found = None
        try:
            n = f.readinto(self.buf)
            e1 = self.buf.find(b"\n", 0, n)
            e2 = self.buf.find(b"\n", e1 + 1, n)
            if e1 < 0 or e2 < 0 or self.buf[e1 + 1] != 70:  # "F"
                return None
            parts = bytes(self.buf[:e1]).split(b" ")
            if len(parts) != 4 or parts[0] != MAGIC or parts[2] != id.encode() or not parts[1].isdigit():
                return None
            hlen = int(parts[1])
            rp = b"Return-Path: <%s>\r\n" % bytes(self.mv[e1 + 3 : e2])
            got = min(n, hlen)
            crc = binascii.crc32(self.mv[:got])
            while got < hlen:
                k = f.readinto(self.mv[: min(_CHUNK, hlen - got)])
                if not k:
                    return None
                crc = binascii.crc32(self.mv[:k], crc)
                got += k
            size = f.seek(0, 2)
            body = size - hlen - TRAILER
            if body < 0:
                return None
            f.seek(size - TRAILER)
            f.readinto(self.mv[:TRAILER])
            t = b"END2 %s %010d %08x " % (id.encode(), body, crc)
            if bytes(self.mv[:34]) != t or bytes(self.mv[34:TRAILER]) != b"%08x\n" % binascii.crc32(t):
                return None
            found = hlen, body, int(parts[3]), rp
            return (found, f) if keep else found
        finally:
            if not (keep and found):
                f.close()

    def open_body(self, user, id, buf):
        """BodyLines over a stored message (Return-Path first); None if it
        has gone."""
        got = self.info(user, id, True)
        if not got:
            return None
        info, f = got
        try:
            f.seek(info[0])
            return BodyLines(f, info[1], buf, info[3])
        except BaseException:
            f.close()  # not to its finaliser (record.Scan says why)
            raise

    # --- routing: the receiver writes mail for one user straight in -----------

    def route(self, rcpts):
        """(user, 0) when every recipient is local and is one configured
        user's, none forwarded: the receiver writes the record into that
        mailbox. Otherwise (None, copies the hand-off will make)."""
        users = []
        direct = True
        for addr, queue in rcpts:
            user = self.policy.user_for(addr) if queue == "local" else None
            if user is None or user not in self.policy.users or self.policy.forward_for(addr):
                direct = False
            elif user not in users:
                users.append(user)
        if direct and len(users) == 1:
            return users[0], 0
        return None, len(users)

    def arrived(self, draft):
        """A record the receiver wrote into draft.owner's mailbox is durable
        (its 250 goes out next): a provider re-send is dropped, the usage
        counted. A failed duplicate check keeps the mail (at-least-once)."""
        user, id = draft.owner, draft.id
        try:
            with Body(draft.path, draft.hlen, draft.size) as body:
                key = self._key(body)
            if key and not self._first(user, key, id, int(self.spool.clock())):
                log.info("mailbox: %s for %s is a re-send, dropped" % (id, user))
                remove(draft.path)
                return
        except OSError as e:
            log.warn("mailbox: no duplicate check for %s: %r" % (id, e))
        self._count(user, 1, draft.hlen + draft.size + TRAILER)

    def _count(self, user, n, size):
        u = self._usage.get(user)
        if u:
            self._usage[user] = (u[0] + n, u[1] + size)

    # --- duplicate suppression (gateway.dedupe) -----------------------------

    def _key(self, body):
        return self.seen.key(body)

    def _first(self, user, key, id, received):
        """False when this user has had key under another id lately (a re-send)."""
        return self.seen.first(self._dir(user) + "/seen", key, id, received)

    def flush(self):
        """Writes the duplicate index's waiting records (every few seconds)."""
        self.seen.flush()

    # --- the hand-off: what waits in the spool's "local" queue ----------------

    def deliver_pending(self, spool):
        """Copies what waits in the spool's "local" queue into the mailboxes
        (gateway.handoff); returns how many spool messages were completed.
        Costs nothing, not even its code, while the spool has had nothing
        for it since the last pass."""
        if not len(spool.fresh) and (not spool.rescan or not spool.ids("local", "", 1)):
            spool.rescan = False
            return 0
        from gateway import handoff

        rescan = spool.rescan
        n = handoff.deliver(self, spool)
        if rescan:  # a boot's or a cycle's pass: its code goes back to the heap
            drop_modules(("gateway.handoff",))
        return n

    def migrate(self, count=16):
        """Moves up to `count` messages of older firmware's mailboxes into
        today's layout (gateway.migrate, loaded only while there are any);
        returns how many: 0 once none is left, or none can move now (no
        room yet: the next boot tries again)."""
        if not self.legacy:
            return 0
        from gateway import migrate

        n = migrate.step(self, self.spool, count)
        if not n:
            drop_modules(("gateway.migrate", "gateway.handoff"))
        return n

    def keep_here(self, id, address):
        """The forward host refused this recipient: deliver to the mailbox."""
        self._kept.add((id, address))

    def kept_here(self, id, address):
        return (id, address) in self._kept

    # --- POP3 side ------------------------------------------------------------

    def lock(self, user):
        """One POP3 session per mailbox: False when it is already held."""
        if user in self._locked:
            return False
        self._locked.add(user)
        return True

    def unlock(self, user):
        self._locked.discard(user)

    def _bits(self, d):
        """A 256-bit map of the whole-looking records in bucket directory d
        (drafts being written are left out)."""
        m = bytearray(32)
        with Scan(d) as entries:
            for e in entries:
                name = e[0]
                if len(name) == 10 and name[9:] == "m" and name[:8] not in self._drafts:
                    i = int(name[6:8], 16)
                    m[i >> 3] |= 1 << (i & 7)
        return m

    def each(self, user):
        """Every record id in user's mailbox, oldest first, one bucket's
        names at a time (a generator: memory flat in the mailbox's size;
        the caller may stop early, no directory iterator is left open
        between buckets)."""
        for d, b in self._buckets(user):
            m = self._bits(d)
            for i in range(256):
                if m[i >> 3] & 1 << (i & 7):
                    yield "%s%02x" % (b, i)

    def ids(self, user):
        """each() as a list: for small mailboxes (tests); a big one is walked
        with each()."""
        return list(self.each(user))

    def listing(self, user):
        """A Listing of whole messages, oldest first, at most MAX_LISTED
        (what arrives meanwhile shows next time). A record cut short by a
        power cut is removed here: it never had its 250, or the spool still
        holds it for the hand-off. MemoryError when the heap has no room
        for it."""
        out = Listing(min(self.usage(user)[0], self.MAX_LISTED))
        room = len(out.ids)
        for id in self.each(user):
            if out.n >= room:
                break
            try:
                info = self.info(user, id)
            except OSError:
                continue  # unreadable now: not shown, not judged
            if info:
                out.add(int(id, 16), len(info[3]) + info[1])
            elif id not in self._drafts:
                log.warn("mailbox: removing %s of %s, cut short" % (id, user))
                self._unlink(user, id)
        return out

    def _unlink(self, user, id):
        path = self._path(user, id)
        st = exists(path)
        if st:
            remove(path)
            self._count(user, -1, -st[6])

    # --- POP3 UPDATE --------------------------------------------------------------
    # The journal is made with the mailbox, JOURNAL bytes long, and only ever
    # rewritten in place, so deleting needs no free cluster on a full card:
    #   "DELE <count:4> <crc32 of the id lines:8>\n" then count "<id>\n" lines.
    # Its head reads "DELE 0000 ..." when nothing is pending; one that does
    # not sum right was torn before any removal began.

    JOURNAL = 512 * ((len(_EMPTY) + _ID_LINE * MAX_LISTED) // 512 + 1)

    def _journal(self, user):
        return self._dir(user) + "/journal"

    def _make_journal(self, user):
        path = self._journal(user)
        if exists(path):
            return
        with open(path, "wb") as f:
            f.write(_EMPTY)
            f.seek(self.JOURNAL - 1)
            f.write(b"\0")
            fsync(f)

    def expunge(self, user, ids):
        """POP3 UPDATE: deletes all of ids (at most MAX_LISTED) or, after a
        crash, none or all of them (never some). The journal is written and
        made durable first; recover() finishes a whole journal."""
        path = self._journal(user)
        try:
            self._make_journal(user)
        except OSError:
            remove(path)  # a journal cut short by a full card is no journal
            raise
        crc = n = 0
        with open(path, "r+b") as f:
            f.seek(len(_EMPTY))
            for id in ids:
                if n == self.MAX_LISTED:
                    raise ValueError("more deletions than one journal holds")
                line = id.encode() + b"\n"
                f.write(line)
                crc = binascii.crc32(line, crc)
                n += 1
            if not n:
                return
            f.seek(0)
            f.write(b"DELE %04d %08x\n" % (n, crc))
            fsync(f)
        self._apply_journal(user)
        if self.waiting and self.spool is not None:
            self.deliver_pending(self.spool)  # room was freed: the spool goes on

    def _journal_ids(self, f):
        """The ids of a whole pending journal (a generator over the file)."""
        head = f.read(len(_EMPTY))
        if head[:5] != b"DELE " or not head[5:9].isdigit():
            return
        n = int(head[5:9])
        crc = 0
        f.seek(len(_EMPTY))
        for _ in range(n):
            crc = binascii.crc32(f.read(_ID_LINE), crc)
        if not n or head != b"DELE %04d %08x\n" % (n, crc):
            return
        f.seek(len(_EMPTY))
        for _ in range(n):
            yield f.read(_ID_LINE)[:8].decode()

    def _apply_journal(self, user):
        path = self._journal(user)
        last = None
        with open(path, "r+b") as f:
            for id in self._journal_ids(f):
                self._unlink(user, id)
                if last and last != id[:6]:
                    self._prune(user, last)
                last = id[:6]
            if last:
                self._prune(user, last)
                f.seek(0)
                f.write(_EMPTY)
                fsync(f)

    def _prune(self, user, bucket):
        """Removes the bucket's directory and then its group's, if empty."""
        group = "%s/%s" % (self._dir(user), bucket[:_GROUP])
        for d in (group + "/" + bucket, group):
            if self.spool is not None:
                self.spool.prune(d)
            else:
                try:
                    os.rmdir(d)
                except OSError:
                    pass

    def recover(self, user):
        """At boot: finish an interrupted UPDATE, and make sure the journal's
        room is taken while there is room. Reads no message: one look at
        the user's directory tells whether older firmware's mail is there
        to move (migrate)."""
        with Scan(self._dir(user)) as entries:
            for e in entries:
                name = e[0]
                if name[-4:] == ".msg" or name == "dele" or len(name) == 6 and e[1] & 0x4000:
                    self.legacy.add(user)
        if exists(self._journal(user)):
            self._apply_journal(user)
        else:
            try:
                self._make_journal(user)
            except OSError as e:
                remove(self._journal(user))
                log.warn("mailbox: no room for the journal of %s yet: %r" % (user, e))
        try:
            self.seen.make(self._dir(user) + "/seen")
        except OSError as e:
            log.warn("mailbox: no room for the duplicate index of %s yet: %r" % (user, e))

    # --- figures ----------------------------------------------------------------

    def usage(self, user):
        """(messages, bytes) stored for user: counted once from the directory
        entries (no message is opened), then kept up to date."""
        u = self._usage.get(user)
        if u is None:
            n = total = 0
            for d, _ in self._buckets(user):
                with Scan(d) as entries:
                    for e in entries:
                        if e[0][9:] == "m":
                            n += 1
                            total += e[3] if len(e) > 3 else os.stat(d + "/" + e[0])[6]
            u = self._usage[user] = (n, total)
        return u

    def used(self, user):
        return self.usage(user)[1]

    def counts(self):
        return {user: self.usage(user) for user in self.policy.users}

    def users_on_card(self):
        """Every mailbox directory, configured user or not."""
        with Scan(self.root) as entries:
            return sorted(e[0] for e in entries if e[1] & 0x4000)
