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


class Throttle:
    """Failed logins per client IP: each failure is answered late (`delay`), and
    an IP with `max_failures` failures within `block` seconds is refused with
    421 until the oldest of them is `block` seconds old."""

    MAX_TRACKED = 10000     # IPs with failures before old entries are swept out

    def __init__(self, delay, max_failures, block, clock=time.monotonic):
        self.delay = delay
        self.max_failures = max_failures
        self.block = block
        self.clock = clock
        self._fails = {}

    def _recent(self, ip):
        now = self.clock()
        fails = [t for t in self._fails.get(ip, ()) if now - t < self.block]
        if fails:
            self._fails[ip] = fails
        else:
            self._fails.pop(ip, None)
        return fails

    def blocked(self, ip):
        return self.max_failures > 0 and len(self._recent(ip)) >= self.max_failures

    def failed(self, ip):
        if len(self._fails) > self.MAX_TRACKED:
            for other in list(self._fails):
                self._recent(other)
        self._fails.setdefault(ip, []).append(self.clock())
