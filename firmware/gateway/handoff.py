# The hand-off: copies what waits in the spool's "local" queue (mail for
# several users, a forward that fell back, a config change since the 250)
# into each user's mailbox as a record of its own, then marks the spool
# `done`. Loaded only when the spool holds something for it
# (Mailboxes.deliver_pending), and dropped again after a full pass.
from array import array

from gateway import log
from gateway.compat import const
from gateway.record import TRAILER, mkdir
from gateway.spool import Draft, SpoolFull, record_header

_ENOSPC = const(28)


def deliver(self, spool):
    """Copies every message of the spool's "local" queue into mailboxes;
    returns how many spool messages were completed. Idempotent: safe to
    call again after a crash at any point. Recipients that map to no user
    (the config changed since the 250) stay pending in the spool, and so
    do those with a forward target until gateway.forward has sent them.
    A card too full for a copy stops the hand-off: the message waits in
    the spool and goes on once room is freed (expunge). Costs nothing
    while the spool has had nothing for it since the last pass, and
    only the new records' while nothing was left behind."""
    count = 0
    forwards = False
    self.waiting = False
    fresh, spool.fresh = spool.fresh, array("I")
    rescan, spool.rescan = spool.rescan, False
    after = ""  # ids are sortable by arrival; a pass never looks back
    while not self.waiting:
        if rescan:
            batch = spool.ids("local", after, self.BATCH)
        else:
            batch = ["%08x" % fresh[i] for i in range(min(self.BATCH, len(fresh)))]
            fresh = fresh[len(batch) :]
        if not batch:
            break
        after = batch[-1]
        for id in batch:
            try:
                n, f = _deliver_id(self, spool, id)
            except KeyError:
                continue  # done meanwhile (the forwarder)
            except (SpoolFull, OSError) as e:
                if not isinstance(e, SpoolFull) and e.args[0] != _ENOSPC:
                    raise
                log.warn("mailbox: %s waits in the spool: %r" % (id, e))
                self.waiting = spool.rescan = True
                break
            count += n
            forwards = forwards or f
    if forwards and self.on_forward:
        self.on_forward(spool)
    return count


def _deliver_id(self, spool, id):
    """(1 if the spool record was completed else 0, forwards pending)."""
    forwards = False
    env = spool.envelope(id)
    served = 0
    left = None  # a bitmap of the local recipients not served here: mostly none
    users = {}  # user -> its first address
    with env.recipients("local") as rcpts:
        for i, addr, _ in rcpts:
            if self.policy.forward_for(addr) and not self.kept_here(id, addr):
                forwards = True  # gateway.forward's job
            else:
                user = self.policy.user_for(addr)
                if user is not None and user in self.policy.users:
                    served += 1
                    users.setdefault(user, addr)
                    continue
                log.warn("mailbox: no user for <%s> in %s, left in the spool" % (addr, id))
                spool.rescan = True  # looked at again once the config changes
            left = left or bytearray(len(env.done))
            left[i >> 3] |= 1 << (i & 7)
    if not served:
        return 0, forwards
    with spool.open(id, env) as body:
        key = self._key(body)
    for user in users:
        _copy(self, user, users[user], env, key, spool)
    spool.done(id, "local", keep=left)
    spool.owed = max(0, spool.owed - len(users) * env.size)
    return 1, forwards


def _copy(self, user, addr, env, key, spool):
    mkdir(self._dir(user))
    id = env.id
    if self.info(user, id):
        return
    if key and not self._first(user, key, id, env.received):
        log.info("mailbox: %s for %s is a re-send, dropped" % (id, user))
        return
    header = record_header(id, env.received, env.mail_from, [(addr, "local")])
    # The hand-off may use the room the receiver kept for it, down to
    # the spool's reserve (journals, the log).
    if spool.free_bytes() < spool.reserve + env.hlen + env.size + TRAILER:
        raise SpoolFull("no room for a copy")
    path = "%s/%s.m" % (self.bucket(user, id, spool), id)
    draft = Draft(spool, id, path, header, floor=spool.reserve)
    try:
        with spool.open(id, env) as body:
            while True:
                k = body.readinto(self.buf)
                if not k:
                    break
                draft.write(self.mv[:k])
        draft.commit()
    except BaseException:
        draft.abort()  # no cut-short copy is left behind
        raise
    self._count(user, 1, draft.hlen + draft.size + TRAILER)
    log.info("mailbox: %s delivered to %s (%d bytes)" % (id, user, draft.size))
