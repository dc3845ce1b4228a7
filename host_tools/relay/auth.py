"""Account checks shared by the ODMR and submission listeners, and the
failed-login throttle."""
import hmac
import os
import time


class Accounts:
    def __init__(self, accounts):
        self._by_user = accounts

    @staticmethod
    def challenge(hostname):
        return f"<{int.from_bytes(os.urandom(8), 'big')}.{int(time.time())}@{hostname}>"

    def check_cram_md5(self, challenge, response):
        """The account for a CRAM-MD5 `response` ("user hexdigest"), or None."""
        user, _, digest = response.rpartition(" ")
        account = self._by_user.get(user)
        # Compute the digest even for an unknown user so timing does not tell which users exist.
        secret = account.secret if account else "\0"
        want = hmac.new(secret.encode(), challenge.encode(), "md5").hexdigest()
        return account if hmac.compare_digest(want, digest.lower()) and account else None

    def check_password(self, user, password):
        account = self._by_user.get(user)
        secret = account.secret if account else "\0"
        return account if hmac.compare_digest(secret.encode(), password.encode()) and account else None


class Window:
    """How many events each key had within the last `span` seconds (failed
    logins per IP, bounces per sender)."""

    MAX_TRACKED = 10000     # keys held before the stale ones are swept out

    def __init__(self, span, clock=time.monotonic):
        self.span = span
        self.clock = clock
        self._events = {}

    def count(self, key):
        now = self.clock()
        recent = [t for t in self._events.get(key, ()) if now - t < self.span]
        if recent:
            self._events[key] = recent
        else:
            self._events.pop(key, None)
        return len(recent)

    def add(self, key):
        if len(self._events) > self.MAX_TRACKED:
            for other in list(self._events):
                self.count(other)
        self._events.setdefault(key, []).append(self.clock())


class Throttle:
    """Failed logins per client IP: each failure is answered late (`delay`), and
    an IP with `max_failures` failures within `block` seconds is refused with
    421 until the oldest of them is `block` seconds old. Logins still being
    checked count as failures until they end, so guesses sent in parallel are
    cut off at `max_failures` too, before any of them has been answered."""

    def __init__(self, delay, max_failures, block, clock=time.monotonic):
        self.delay = delay
        self.max_failures = max_failures
        self._failures = Window(block, clock)
        self._running = {}      # ip -> logins begun and not yet ended

    def blocked(self, ip):
        tries = self._failures.count(ip) + self._running.get(ip, 0)
        return self.max_failures > 0 and tries >= self.max_failures

    def begin(self, ip):
        """Start a login for `ip`; False (and nothing started) when it is blocked."""
        if self.blocked(ip):
            return False
        self._running[ip] = self._running.get(ip, 0) + 1
        return True

    def end(self, ip):
        """The login begun for `ip` is over; call failed() first if it failed."""
        left = self._running.pop(ip) - 1
        if left:
            self._running[ip] = left

    def failed(self, ip):
        self._failures.add(ip)
