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
from gateway import record
from gateway.record import Scan
from gateway.spool import Draft, record_header

SPECIAL = (("Sent", b"\\Sent"), ("Drafts", b"\\Drafts"), ("Trash", b"\\Trash"))
_NAME = const(32)  # the longest folder name a user may make
_TRAILER = const(43)  # a record's END2 trailer (spool.Draft.commit)
MAX_FOLDERS = 32  # folders a user may make beside the four; LIST shows no more


def mailbox(user, name):
    """The Mailboxes name of folder `name` of user; None when the name is
    not one a folder may have (the case of INBOX and the special folders is
    the client's choice)."""
    up = name.upper()
    if up == "INBOX":
        return user
    for special, _ in SPECIAL:
        if up == special.upper():
            return user + "/folders/" + special
    if not 0 < len(name) <= _NAME or name[0] in ". " or name[-1] == " ":
        return None
    for c in name.encode():
        if not (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c in b" -_."):
            return None
    return user + "/folders/" + name


def exists(boxes, user, name):
    box = mailbox(user, name)
    return box is not None and (box == user or name.upper() in ("SENT", "DRAFTS", "TRASH") or
                                record.exists(boxes.home(box)) is not None)


def names(boxes, user):
    """(name, special-use attribute or b"") of every folder, INBOX first."""
    out = [("INBOX", b"")] + list(SPECIAL)
    with Scan(boxes.home(user) + "/folders") as entries:
        for e in entries:
            if e[1] & 0x4000 and e[0] not in ("Sent", "Drafts", "Trash") and len(out) < 4 + MAX_FOLDERS:
                out.append((e[0], b""))
    return out


def made(boxes, box):
    """box's directory, made if it is not there yet (the special folders
    come into being when first used)."""
    home = boxes.home(box)
    slots.mkdir(home[: home.rfind("/")])
    slots.mkdir(home)
    boxes.recover(box)  # a deletion cut short by a power cut is finished
    return home


def create(boxes, user, name):
    """None, or why the folder cannot be made."""
    box = mailbox(user, name)
    if box is None or "/" in name:
        return b"[CANNOT] a folder name is 1-32 letters, digits, spaces, - _ or ."
    if exists(boxes, user, name):
        return b"[ALREADYEXISTS] that folder exists"
    if len(names(boxes, user)) >= 4 + MAX_FOLDERS:
        return b"[LIMIT] %d folders are the most" % MAX_FOLDERS
    made(boxes, box)
    return None


def delete(boxes, user, name):
    box = mailbox(user, name)
    if box is None or box == user or name.upper() in ("SENT", "DRAFTS", "TRASH"):
        return b"[CANNOT] INBOX, Sent, Drafts and Trash stay"
    if not exists(boxes, user, name):
        return b"[NONEXISTENT] no such folder"
    _remove_tree(boxes.home(box))
    return None


def rename(boxes, user, old, new):
    a, b = mailbox(user, old), mailbox(user, new)
    if a is None or a == user or old.upper() in ("SENT", "DRAFTS", "TRASH"):
        return b"[CANNOT] INBOX, Sent, Drafts and Trash keep their names"
    if not exists(boxes, user, old):
        return b"[NONEXISTENT] no such folder"
    if b is None or "/" in new:
        return b"[CANNOT] a folder name is 1-32 letters, digits, spaces, - _ or ."
    if exists(boxes, user, new):
        return b"[ALREADYEXISTS] that folder exists"
    os.rename(boxes.home(a), boxes.home(b))
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
            record.remove(path + "/" + name)
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
