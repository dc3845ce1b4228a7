# The folders beside the INBOX: Sent, Drafts and Trash (special use, RFC
# 6154) and those a user creates. Each is a mailbox of its own under
# <user>/folders/<name>/, laid out as the INBOX is (buckets of records, the
# deletion journal, imap/ state), so Mailboxes lists, reads and expunges it
# under the name "<user>/folders/<name>". POP3 shows the INBOX only.
# Messages come in by APPEND, COPY and MOVE as records with new spool ids, so
# a UID grows in every folder and is never reused in any.
import os

from gateway.compat import const
from gateway.imap import slots
from gateway.imap.folder import ANNOUNCED
from gateway.record import Scan, remove
from gateway.spool import Draft, record_header

SPECIAL = (("Sent", b"\\Sent"), ("Drafts", b"\\Drafts"), ("Trash", b"\\Trash"))
_NAME = const(32)  # the longest folder name a user may make
_ENTRY = const(33)  # a name in the table: its length, then up to _NAME bytes
_ENTRIES = const(32)  # the table's size, whatever MAX_FOLDERS allows: a card's table stays readable
_TRAILER = const(43)  # a record's END2 trailer (spool.Draft.commit)
MAX_FOLDERS = 32  # folders a user may make beside the four


# A user's own folders are directories ~00 to ~31 under <user>/folders/, and
# their names are in one table beside them (`names`, a slots record, entry k
# naming ~k). FAT's rename is no atomic change: a power cut in it can leave
# the old name and the new one both pointing at the same clusters, and a
# deletion cut short leaves part of a folder. So CREATE, RENAME and DELETE
# each change the table in one write: the old names or the new ones. A
# directory whose entry is free is what a cut left of a DELETE or a CREATE,
# and is cleared when it is seen (LIST) or its entry is taken again, while
# the table reads: a card that lost it keeps every directory.


def _valid(name):
    if not 0 < len(name) <= _NAME or name[0] in ". " or name[-1] == " ":
        return False
    for c in name.encode():
        if not (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c in b" -_."):
            return False
    return True


def _special(user, name):
    """The Mailboxes name of INBOX or a special folder (any case, as the
    client likes); None for any other name."""
    up = name.upper()
    if up == "INBOX":
        return user
    for special, _ in SPECIAL:
        if up == special.upper():
            return user + "/folders/" + special
    return None


def _table(boxes, user):
    """(the table of user's folder names, its generation, its path)."""
    path = boxes.home(user) + "/folders/names"
    t = bytearray(_ENTRY * _ENTRIES)
    return t, slots.read(path, t), path


def _find(t, name):
    """The entry named name, or -1."""
    b = name.encode()
    for k in range(_ENTRIES):
        at = k * _ENTRY
        if t[at] == len(b) and t[at + 1 : at + 1 + len(b)] == b:
            return k
    return -1


def _dir(user, k):
    return "%s/folders/~%02d" % (user, k)


def mailbox(boxes, user, name):
    """The Mailboxes name of folder `name` of user; None when it has none."""
    box = _special(user, name)
    if box is None:
        k = _find(_table(boxes, user)[0], name)
        if k >= 0:
            box = _dir(user, k)
    return box


def names(boxes, user):
    """(name, special-use attribute or b"") of every folder, INBOX first."""
    out = [("INBOX", b"")] + list(SPECIAL)
    t, gen, _ = _table(boxes, user)
    if gen:  # with no table that reads, nothing is judged a leftover: the mail stays
        _sweep(boxes.home(user) + "/folders", t)
    for k in range(_ENTRIES):
        n = t[k * _ENTRY]
        if n:
            out.append((bytes(t[k * _ENTRY + 1 : k * _ENTRY + 1 + n]).decode(), b""))
    return out


def _sweep(path, t):
    """Removes the ~k directories whose entry in t is free."""
    left = []
    with Scan(path) as entries:
        for e in entries:
            k = int(e[0][1:]) if e[0].startswith("~") and e[0][1:].isdigit() and e[1] & 0x4000 else _ENTRIES
            if k < _ENTRIES and not t[k * _ENTRY]:
                left.append(e[0])
    for d in left:
        _remove_tree(path + "/" + d)


def made(boxes, box):
    """box's directory, made if it is not there yet (the special folders
    come into being when first used)."""
    home = boxes.home(box)
    slots.mkdir(home[: home.rfind("/")])
    slots.mkdir(home)
    boxes.recover(box)  # a deletion cut short by a power cut is finished
    return home


def _name(t, k, name):
    b = name.encode()
    t[k * _ENTRY] = len(b)
    t[k * _ENTRY + 1 : k * _ENTRY + 1 + len(b)] = b


def create(boxes, user, name):
    """None, or why the folder cannot be made."""
    if not _valid(name):
        return b"[CANNOT] a folder name is 1-32 letters, digits, spaces, - _ or ."
    if mailbox(boxes, user, name):
        return b"[ALREADYEXISTS] that folder exists"
    t, gen, path = _table(boxes, user)
    free = [k for k in range(_ENTRIES) if not t[k * _ENTRY]]
    if not free or _ENTRIES - len(free) >= MAX_FOLDERS:
        return b"[LIMIT] %d folders are the most" % MAX_FOLDERS
    k = free[0]
    if gen:
        _remove_tree(boxes.home(_dir(user, k)))  # what a cut left in it
    made(boxes, _dir(user, k))
    _name(t, k, name)
    slots.write(path, t, gen)
    return None


def delete(boxes, user, name):
    if _special(user, name):
        return b"[CANNOT] INBOX, Sent, Drafts and Trash stay"
    t, gen, path = _table(boxes, user)
    k = _find(t, name)
    if k < 0:
        return b"[NONEXISTENT] no such folder"
    t[k * _ENTRY] = 0
    slots.write(path, t, gen)
    _remove_tree(boxes.home(_dir(user, k)))
    return None


def rename(boxes, user, old, new):
    if _special(user, old):
        return b"[CANNOT] INBOX, Sent, Drafts and Trash keep their names"
    t, gen, path = _table(boxes, user)
    k = _find(t, old)
    if k < 0:
        return b"[NONEXISTENT] no such folder"
    if not _valid(new):
        return b"[CANNOT] a folder name is 1-32 letters, digits, spaces, - _ or ."
    if _special(user, new) or _find(t, new) >= 0:
        return b"[ALREADYEXISTS] that folder exists"
    _name(t, k, new)
    slots.write(path, t, gen)
    return None


def _remove_tree(path):
    names = []
    with Scan(path) as entries:
        for e in entries:
            names.append((e[0], e[1] & 0x4000))
    for name, is_dir in names:
        if is_dir:
            _remove_tree(path + "/" + name)
        else:
            remove(path + "/" + name)
    try:
        os.rmdir(path)
    except OSError:
        pass


# --- messages coming in --------------------------------------------------------------

class Flags:
    """Flag bytes for new messages of one folder, written one bucket page
    at a time (their ids come in order)."""

    def __init__(self, home):
        self.dir = home + "/imap"
        self.page = bytearray(256)
        self.bucket = None
        self.gen = 0
        self.dirty = False

    def set(self, uid, bits):
        bucket = "%06x" % (uid >> 8)
        if bucket != self.bucket:
            self.flush()
            self.bucket = bucket
            self.gen = slots.read(self._path(), self.page)
        self.page[uid & 255] = bits & ~ANNOUNCED
        self.dirty = True

    def _path(self):
        return "%s/%s.flg" % (self.dir, self.bucket)

    def flush(self):
        if self.dirty:
            slots.mkdir(self.dir)
            self.gen = slots.write(self._path(), self.page, self.gen)
            self.dirty = False


def begin(boxes, box, mail_from, received):
    """A Draft of a new record in folder box (whose directory exists); not
    listed, nor judged cut short, until its commit."""
    spool = boxes.spool
    id = spool._new_id()
    d = boxes.bucket(box, id, spool)
    spool.drafts.add(id)
    try:
        return Draft(spool, id, "%s/%s.m" % (d, id), record_header(id, received, mail_from, [(box, "local")]),
                     floor=spool.reserve)
    except OSError:
        spool.drafts.discard(id)
        raise


def commit(boxes, box, draft):
    """Commits a record begun here; its UID. The folder's count goes up,
    which sizes its next listing (Mailboxes.listing)."""
    id = draft.commit()
    boxes._count(box, 1, draft.hlen + draft.size + _TRAILER)
    return int(id, 16)


def copy(boxes, user, uid, box, buf):
    """Copies message uid of mailbox `user` into folder box as a new record
    (same sender, arrival time and bytes); its new UID."""
    from gateway.spool import Body

    id = "%08x" % uid
    info = boxes.info(user, id)
    if not info:
        raise KeyError(id)
    hlen, size, received, rp = info
    draft = begin(boxes, box, rp[14:-3].decode(), received)
    try:
        with Body(boxes._path(user, id), hlen, size) as body:
            while True:
                n = body.readinto(buf)
                if not n:
                    break
                draft.write(memoryview(buf)[:n])
        return commit(boxes, box, draft)
    except BaseException:
        draft.abort()
        raise
