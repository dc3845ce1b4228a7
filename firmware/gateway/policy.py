# Who is who and who may send where: the address book built from the config
# (addresses, catch-alls, quotas, forward targets, the LAN allow list). It
# knows nothing of SMTP: the handlers (gateway.handlers) apply it to the two
# listeners, and the App wires the parts that act on it (gateway.forward).
from gateway import ipv4

# Characters that route mail onwards in old MTAs (percent hack, bang paths) or
# hide a second address in a quoted local part. We never interpret them, and a
# catch-all must not swallow them either: they are refused as unknown users.
_ROUTING = "%!@\"\\:"


def split_address(address):
    """(local part, lower-case domain) of an RCPT/MAIL path; a source route
    (@a,@b:user@dom, RFC 5321 appendix C) is dropped as the RFC says, so only
    the final address is ever judged. ("", "") for a path with no domain."""
    address = address.strip()
    if address[:1] == "<" and address[-1:] == ">":
        address = address[1:-1]
    if address[:1] == "@":
        colon = address.find(":")
        address = address[colon + 1 :] if colon > 0 else ""
    at = address.rfind("@")
    if at <= 0 or at == len(address) - 1:
        return "", ""
    return address[:at], address[at + 1 :].lower().rstrip(".")


class Policy:
    """The address book: address -> user, per-domain catch-all, quotas.
    Mailboxes registers itself (`mailboxes`) so quotas see what is stored."""

    def __init__(self, cfg):
        self.users = cfg["users"]
        self.catch_all = {}
        for dom, user in cfg["catch_all"].items():
            self.catch_all[dom.lower()] = user
        self.addresses = {}
        self.domains = set(self.catch_all)
        for dom in cfg["domains"]:
            self.domains.add(dom.lower())
        for user, entry in self.users.items():
            for addr in entry["addresses"]:
                local, dom = split_address(addr)
                if dom:
                    self.addresses[local.lower() + "@" + dom] = user
                    self.domains.add(dom)
        self.allow = [ipv4.network(c) for c in cfg["smtp"]["allow"]]
        # cfg["forward"]: user name or domain -> "host[:port]" (gateway.forward)
        self.forwards = {}
        for key, target in cfg["forward"].items():
            self.forwards[key] = self.forwards[key.lower()] = target
        self.cfg = cfg  # the validated config it was built from (IMAP reads its limits there)
        self.mailboxes = None  # Mailboxes registers itself: quotas see what is stored
        self._logins = None

    def is_local_domain(self, domain):
        return domain.lower().rstrip(".") in self.domains

    def user_for(self, address):
        local, dom = split_address(address)
        if not dom:
            return None
        user = self.addresses.get(local.lower() + "@" + dom)
        if user:
            return user
        if local and not any(c in _ROUTING for c in local):
            return self.catch_all.get(dom)
        return None

    def forward_for(self, address):
        """The internal host ("host[:port]") that takes this recipient's mail
        instead of a mailbox, or None. Only known users (or the catch-all)
        are forwarded, so a refusal there can fall back to the mailbox."""
        if not self.forwards:
            return None
        user = self.user_for(address)
        if user is None:
            return None
        return self.forwards.get(user) or self.forwards.get(split_address(address)[1])

    def logins(self):
        """The failed-login record SMTP AUTH and POP3 share (gateway.guard),
        made at the first login."""
        if self._logins is None:
            from gateway.guard import Logins

            self._logins = Logins()
        return self._logins

    def password(self, user):
        """The user's password; None for an unknown user and for one with
        no password, who can never log in."""
        entry = self.users.get(user)
        return (entry["password"] or None) if entry else None

    def quota(self, user):
        entry = self.users.get(user)
        return entry["quota"] if entry else 0

    def check_local_rcpt(self, address, size=0):
        """None when the address may receive a message of `size` bytes (0 =
        size not declared). A full mailbox is temporary (452 4.2.2: the user
        fetches mail and the sender retries); a message bigger than the whole
        quota can never fit (552 5.2.2)."""
        user = self.user_for(address)
        if user is None:
            return 550, "5.1.1 No such user here"
        limit = self.quota(user)
        if not limit:
            return None
        if size > limit:
            return 552, "5.2.2 Message larger than the mailbox quota"
        used = self.mailboxes.used(user) if self.mailboxes else 0
        if used + size >= limit:
            return 452, "4.2.2 Mailbox full, try again later"
        return None

    def allowed_peer(self, ip):
        """Whether a client at ip (compat.peer_ip) may use the listeners."""
        try:
            v = ipv4.value(ip)
        except ValueError:
            return False
        for net, mask in self.allow:
            if v & mask == net:
                return True
        return False
