# What one client address may do to the listeners, whatever it sends: the
# failed-login record SMTP AUTH, POP3 and IMAP share (Logins, check_password),
# and each mail client listener's session slots (Slots, listen). Both are
# fixed in size or bounded by the sessions open, never by the number of
# attackers.
import time

from gateway import log, sasl


def _now():
    return int(time.time())


def short_of(room):
    """True when less than room bytes stay free even after a collection
    (never on CPython, which has no such heap)."""
    from gateway.compat import mem_free

    free = mem_free()
    if free is None or free >= room:
        return False
    import gc

    gc.collect()
    return mem_free() < room


# Failed logins per client address, one record that SMTP AUTH and POP3
# share, so that changing protocol does not start the count again. After
# MAX_FAILURES within LOCK_TIME an address is locked out for LOCK_TIME: no
# password is checked for it then, the right one included. The table has a
# fixed number of slots, so an attacker with many addresses cannot make it
# grow; a new address takes an empty or expired slot, else the one with the
# fewest failures, so a locked address outlasts addresses that tried once.
class Logins:
    SLOTS = 16
    MAX_FAILURES = 5  # per address before it is locked out
    LOCK_TIME = 900  # s a failure is remembered, and a lockout lasts
    DELAY = 2  # s before a failed login is answered; other sessions run meanwhile
    SESSION_TRIES = 3  # failed logins before the session is closed

    def __init__(self, clock=_now):
        self.clock = clock
        self.addr = [None] * self.SLOTS
        self.count = bytearray(self.SLOTS)
        self.last = [0] * self.SLOTS

    def _slot(self, ip):
        """The slot holding ip's live record, or -1."""
        for i in range(self.SLOTS):
            if self.addr[i] == ip:
                if self.clock() - self.last[i] > self.LOCK_TIME:
                    self.addr[i] = None
                    return -1
                return i
        return -1

    def locked(self, ip):
        """Seconds left of ip's lockout; 0 when it may try a password."""
        i = self._slot(ip)
        if i < 0 or self.count[i] < self.MAX_FAILURES:
            return 0
        return max(1, self.last[i] + self.LOCK_TIME - self.clock())

    def failed(self, ip, user, what):
        """Counts a failed login of `user` from ip, and logs it."""
        i = self._slot(ip)
        if i < 0:
            i = self._free()
            self.addr[i] = ip
            self.count[i] = 0
        self.count[i] = min(255, self.count[i] + 1)
        self.last[i] = self.clock()
        n = self.count[i]
        log.warn("%s: failed login for %r from %s (%d of %d)" % (what, user[:64], ip, n, self.MAX_FAILURES))
        if n == self.MAX_FAILURES:
            log.warn("logins: %s locked out for %d s after %d failed logins" % (ip, self.LOCK_TIME, n))

    def _free(self):
        now = self.clock()
        best = 0
        for i in range(self.SLOTS):
            if self.addr[i] is None or now - self.last[i] > self.LOCK_TIME:
                return i
            c, b = self.count[i], self.count[best]
            if c < b or c == b and self.last[i] < self.last[best]:
                best = i
        return best


# The session slots of one listener: at most `total` sessions at once, and
# at most half of them from one client address, so that one address (an
# attacker's idle sockets) can never take every slot. One entry per address
# with a session open: the memory is bounded by `total`, not by the peers.
class Slots:
    SHARE = 2  # one address gets at most total // SHARE slots (at least one)
    # A session starts only while the heap keeps this much free after a
    # collection: about what one takes beyond the buffers it gets at
    # connect (8 POP3 and 8 SMTP sessions took 27-33 KB on the 32-bit
    # build). Past it, a client is refused before its session begins, and
    # tries again, rather than failing half-way for lack of memory.
    ROOM = 4 * 1024

    def __init__(self, total):
        self.total = total
        self.per_address = max(1, total // self.SHARE)
        self.open = 0
        self.by_address = {}

    def take(self, ip):
        """A refusal sentence, or None and the slot is ip's until give(ip)."""
        n = self.by_address.get(ip, 0)
        if self.open >= self.total:
            return "Too many connections, try later"
        if n >= self.per_address:
            return "Too many connections from your address, try later"
        if short_of(self.ROOM):
            log.warn("no memory for another session")
            return "Too busy for another connection, try later"
        self.by_address[ip] = n + 1
        self.open += 1
        return None

    def give(self, ip):
        n = self.by_address[ip] - 1
        if n:
            self.by_address[ip] = n
        else:
            del self.by_address[ip]
        self.open -= 1


def check_password(policy, ip, user, given, what):
    """0 when `given` is user's password; -1 for a failure, counted (the
    caller waits Logins.DELAY before it answers); or, while ip is locked
    out, the seconds left (no password is checked then, the right one
    included). Neither a coroutine nor a late import: a login on a cut-up
    heap needs no block for either."""
    logins = policy.logins()
    wait = logins.locked(ip)
    if wait:
        return wait
    secret = policy.password(user)
    if secret and sasl.equal(secret, given):
        return 0
    logins.failed(ip, user, what)
    return -1


async def listen(host, port, max_sessions, policy, make, denied, busy, what):
    """The listener of a mail client protocol (POP3, IMAP): make(reader,
    writer, ip) gives the session, whose run() serves it. A client from a
    network outside smtp.allow gets the line `denied`; beyond max_sessions,
    beyond half of them from one address, or when the heap has no room for
    one more session, `busy` and a sentence. Either way it is closed."""
    import asyncio

    from gateway.compat import no_delay, peer_ip

    slots = Slots(max_sessions)

    async def client(reader, writer):
        no_delay(writer)
        ip = peer_ip(writer.get_extra_info("peername"))
        session = None
        refusal = None if policy.allowed_peer(ip) else denied
        if refusal is None:
            refusal = slots.take(ip)
            if refusal is None:
                try:
                    session = make(reader, writer, ip)
                except MemoryError:
                    slots.give(ip)
                    refusal = "Too many connections, try later"
            refusal = refusal and busy + refusal
        try:
            if session is None:
                writer.write(refusal.encode() + b"\r\n")
                await writer.drain()
            else:
                try:
                    await session.run()
                finally:
                    slots.give(ip)
        except Exception as e:  # one broken session must never stop the listener
            log.error("%s: session failed: %r" % (what, e))
        finally:
            try:
                writer.close()
                await writer.wait_closed()
            except Exception:
                pass

    return await asyncio.start_server(client, host, port)
