# The session slots of one listener: at most `total` sessions at once, and
# at most half of them from one client address, so that one address (an
# attacker's idle sockets) can never take every slot. One entry per address
# with a session open: the memory is bounded by `total`, not by the peers.


class Slots:
    SHARE = 2  # one address gets at most total // SHARE slots (at least one)

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
