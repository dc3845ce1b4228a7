# Older firmware's mailboxes, moved into today's layout (gateway/mailbox.py)
# a few messages a step, so the box serves POP3 while it goes on
# (Mailboxes.migrate, from the boot's hand-off). Loaded only while a user's
# directory holds such mail (Mailboxes.recover looks once at boot).
#   first layout   <user>/<id>.msg: "ODMB1 <id> <received> <key>\n", then
#                  "Return-Path: <from>\r\n" and the message, then
#                  "\0ODME <n> <id>\n" (n: the Return-Path line and the
#                  message); <user>/dele, its POP3 UPDATE journal: the ids,
#                  then "END\n" once whole
#   second layout  <user>/<id[:6]>/<id>.m: today's record, one level up
# Each message is copied as a record of today's (handoff._copy: written
# under its final name, judged by its trailer) and only then is the old file
# removed, so a power cut leaves the old file (copied again, or its copy
# found whole) and never a message in neither place; FAT's rename is not
# used. A file that was cut short never had its 250 or still waits in the
# spool (both firmwares delivered before marking the spool done): removed.
import os

from gateway import handoff, log
from gateway.compat import const
from gateway.record import Scan, remove
from gateway.spool import SpoolFull
from gateway.spoolread import Envelope, valid

_ENOSPC = const(28)
_TAIL = const(96)  # enough to hold a first-layout trailer


class _First:
    """A first-layout message file as the envelope handoff._copy takes:
    .id .path .received .mail_from, the message at .hlen, .size bytes.
    Raises ValueError when the file was cut short."""

    def __init__(self, path, id):
        with open(path, "rb") as f:
            head = f.readline()
            rp = f.readline()
            end = f.seek(0, 2)
            f.seek(max(0, end - _TAIL))
            tail = f.read(_TAIL)
        parts = head.split()
        i = tail.rfind(b"\0ODME ")
        t = tail[i + 6 : -1].split()
        if (len(parts) != 4 or parts[0] != b"ODMB1" or parts[1] != id.encode() or not parts[2].isdigit() or i < 0
                or tail[-1:] != b"\n" or len(t) != 2 or t[1] != id.encode() or not t[0].isdigit()
                or len(head) + int(t[0]) + len(tail) - i != end or rp[:14] != b"Return-Path: <" or rp[-3:] != b">\r\n"):
            raise ValueError("cut short")
        self.id = id
        self.path = path
        self.received = int(parts[2])
        self.mail_from = rp[14:-3].decode()
        self.hlen = len(head) + len(rp)
        self.size = int(t[0]) - len(rp)


def step(boxes, spool, count):
    """Moves up to `count` messages of boxes.legacy's users; returns how
    many it moved or removed (0: nothing left to move now)."""
    done = 0
    for user in list(boxes.legacy):
        if done >= count:
            break
        try:
            n = _user(boxes, spool, user, count - done)
        except (SpoolFull, OSError) as e:
            if not isinstance(e, SpoolFull) and e.args[0] != _ENOSPC:
                raise
            log.warn("mailbox: older mail of %s waits for room: %r" % (user, e))
            continue
        if not n:
            boxes.legacy.discard(user)
            log.info("mailbox: older firmware's mail of %s is in today's layout" % user)
        done += n
    return done


def _user(boxes, spool, user, count):
    home = boxes._dir(user)
    _finish_update(home)
    names = []
    with Scan(home) as entries:
        for e in entries:
            name = e[0]
            if len(names) < count and (name[-4:] == ".msg" or len(name) == 6 and e[1] & 0x4000):
                names.append(name)
    n = 0
    for name in names:
        if n >= count:
            break
        if name[-4:] == ".msg":
            n += _move(boxes, spool, user, home + "/" + name, name[:-4], True)
        else:
            n += _bucket(boxes, spool, user, home + "/" + name, count - n)
    return n


def _bucket(boxes, spool, user, d, count):
    names = []
    with Scan(d) as entries:
        for e in entries:
            if len(names) < count and e[0][-2:] == ".m":
                names.append(e[0])
    for name in names:
        _move(boxes, spool, user, d + "/" + name, name[:-2], False)
    if len(names) < count:  # nothing left in it: the directory goes too
        try:
            os.rmdir(d)
            return len(names) + 1
        except OSError:
            pass  # something that is no message: left alone
    return len(names)


def _move(boxes, spool, user, path, id, first):
    try:
        if first:
            env = _First(path, id)
            addr = ((boxes.policy.users.get(user) or {}).get("addresses") or [user])[0]
        else:
            env = Envelope(path)
            if not valid(path, boxes.mv):
                raise ValueError("cut short")
            with env.recipients() as rcpts:
                addr = next(rcpts)[1]  # a record straight into a mailbox: its one recipient
    except (ValueError, IndexError):
        log.warn("mailbox: removing %s of %s, cut short (older firmware)" % (id, user))
    else:
        handoff._copy(boxes, user, addr, env, None, spool)
    os.remove(path)  # raises rather than leave a file to be found again
    return 1


def _finish_update(home):
    """The first layout's UPDATE journal: a whole one is finished (the user
    asked for those deletions), a torn one dropped (nothing was removed)."""
    path = home + "/dele"
    try:
        f = open(path, "rb")
    except OSError:
        return
    with f:
        f.seek(max(0, f.seek(0, 2) - 4))
        if f.read(4) == b"END\n":
            f.seek(0)
            for line in f:
                id = line.strip().decode()
                if id and id != "END":
                    remove(home + "/" + id + ".msg")
    os.remove(path)
