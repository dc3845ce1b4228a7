# Who may send where. The SMTP engine knows nothing about users or relaying:
# it asks these handlers at each step (aiosmtpd style). One Policy holds the
# address map built from the config; two handlers apply it to the two
# listeners: the provider's delivery after ATRN, and the office LAN.
from gateway import log
from gateway.smtp.server import Handler

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


def parse_cidr(text):
    """(network, mask) as 32-bit ints from "a.b.c.d/n" (or a bare address).
    By hand: MicroPython has no ipaddress module. Raises ValueError."""
    addr, _, bits = text.strip().partition("/")
    n = int(bits) if bits else 32
    if not 0 <= n <= 32:
        raise ValueError("bad prefix length in %r" % text)
    mask = (0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF
    return ip_value(addr) & mask, mask


def ip_value(text):
    """A dotted IPv4 address as an int; IPv4-mapped IPv6 (::ffff:a.b.c.d) too."""
    if text[:7].lower() == "::ffff:":
        text = text[7:]
    parts = text.split(".")
    if len(parts) != 4:
        raise ValueError("not an IPv4 address: %r" % text)
    v = 0
    for p in parts:
        if not p.isdigit() or int(p) > 255:
            raise ValueError("not an IPv4 address: %r" % text)
        v = (v << 8) | int(p)
    return v


def peer_ip(peer):
    """The address part of a peer as asyncio reports it: ("ip", port) or "ip"."""
    if isinstance(peer, (tuple, list)):
        peer = peer[0]
    return peer if isinstance(peer, str) else None


class Policy:
    """The address book: address -> user, per-domain catch-all, quotas.
    Mailboxes registers itself (`mailboxes`) so quotas see what is stored."""

    def __init__(self, cfg):
        self.users = cfg.get("users") or {}
        self.catch_all = {}
        for dom, user in (cfg.get("catch_all") or {}).items():
            self.catch_all[dom.lower()] = user
        self.addresses = {}
        self.domains = set(self.catch_all)
        for dom in cfg.get("domains") or ():
            self.domains.add(dom.lower())
        for user, entry in self.users.items():
            for addr in entry.get("addresses") or ():
                local, dom = split_address(addr)
                if dom:
                    self.addresses[local.lower() + "@" + dom] = user
                    self.domains.add(dom)
        self.allow = [parse_cidr(c) for c in (cfg.get("smtp") or {}).get("allow") or ()]
        # cfg["forward"]: user name or domain -> "host[:port]" (gateway.forward)
        self.forwards = {}
        for key, target in (cfg.get("forward") or {}).items():
            self.forwards[key] = self.forwards[key.lower()] = target
        self.cfg = cfg
        self.mailboxes = None
        self._forwarder = None
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

    def forwarder(self):
        if self._forwarder is None:
            from gateway.forward import Forwarder

            self._forwarder = Forwarder(self.cfg, self)
        return self._forwarder

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
        return (entry.get("password") or None) if entry else None

    def quota(self, user):
        entry = self.users.get(user)
        return (entry.get("quota") or 0) if entry else 0

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

    def allowed_peer(self, peer):
        ip = peer_ip(peer)
        try:
            v = ip_value(ip) if ip else None
        except ValueError:
            v = None
        if v is None:
            return False
        for net, mask in self.allow:
            if v & mask == net:
                return True
        return False


def _declared_size(params):
    """SIZE=n from MAIL parameters (a dict, or a list of "KEY=value")."""
    try:
        if isinstance(params, dict):
            for k, v in params.items():
                if k.upper() == "SIZE":
                    return int(v)
        else:
            for p in params or ():
                k, _, v = p.partition("=")
                if k.upper() == "SIZE":
                    return int(v)
    except (ValueError, TypeError):
        pass
    return 0


class _SpoolingHandler(Handler):
    """What both listeners share: limits from the config, the spool, the
    declared size for quota checks, and the hand-offs after the 250, decided
    by the queues of the message that got it (not by the handler's state: a
    pipelined MAIL may already have started the next transaction)."""

    def __init__(self, cfg, spool, policy, on_delivered=None, on_outbound=None):
        smtp = cfg.get("smtp") or {}
        if smtp.get("max_size"):
            self.max_size = smtp["max_size"]
        if cfg.get("hostname"):
            self.hostname = cfg["hostname"]
        self.spool = spool
        self.policy = policy
        self.on_delivered = on_delivered
        self.on_outbound = on_outbound
        self.size = 0

    def mail(self, session, address, params):
        self.size = _declared_size(params)
        return None

    def local_rcpt(self, address):
        refusal = self.policy.check_local_rcpt(address, self.size)
        if refusal:
            return refusal
        return "local"

    def delivered(self, session, id, rcpts):
        # on_delivered(spool) is Mailboxes.deliver_pending: local mail lands in
        # the mailbox at once (and forwarding starts); on_outbound() pokes the
        # scheduler.
        if self.on_delivered and _to(rcpts, "local"):
            try:
                self.on_delivered(self.spool)
            except Exception as e:  # the 250 is out: the mail waits in the spool
                log.error("delivery of %s failed, kept in the spool: %r" % (id, e))
        if self.on_outbound and _to(rcpts, "out"):
            self.on_outbound()


def _to(rcpts, queue):
    for _, q in rcpts:
        if q == queue:
            return True
    return False


class InboundHandler(_SpoolingHandler):
    """The provider's delivery after ATRN: only our own users, never a relay."""

    def __init__(self, cfg, spool, policy, on_delivered=None):
        _SpoolingHandler.__init__(self, cfg, spool, policy, on_delivered)

    def rcpt(self, session, address):
        _, dom = split_address(address)
        if not dom or not self.policy.is_local_domain(dom):
            return 550, "5.7.1 Relaying denied: not a domain of this gateway"
        return self.local_rcpt(address)


class LanHandler(_SpoolingHandler):
    """Office PCs: only listed networks may connect; local mail is delivered
    at once; outside mail needs AUTH, so the box is never an open relay."""

    login_timeout = 60  # s between commands before AUTH (a client sends them at once)

    def __init__(self, cfg, spool, policy, peer_ip=None, on_delivered=None, on_outbound=None, tls=None):
        _SpoolingHandler.__init__(self, cfg, spool, policy, on_delivered, on_outbound)
        self.peer_ip = peer_ip
        self.tls = tls
        self.clear_text = cfg.get("clear_text_logins")

    def connect(self, session):
        if not self.policy.allowed_peer(self.peer_ip or session.peer):
            return 554, "5.7.1 Your network may not use this server"
        return None

    def ehlo_keywords(self, session):
        # PLAIN and LOGIN carry the password itself: only inside TLS, unless
        # the config allows it for an old client. CRAM-MD5 never does.
        return ["AUTH PLAIN LOGIN CRAM-MD5" if session.secure or self.clear_text else "AUTH CRAM-MD5"]

    def auth_password(self, session, user):
        return self.policy.password(user)

    def logins(self, session):
        return self.policy.logins()

    def mail(self, session, address, params):
        # RFC 6409 6.1: a user sends as themselves. A foreign sender would
        # also leave no mailbox for the bounce if the smarthost refuses it.
        if session.user and self.policy.user_for(address) != session.user:
            return 553, "5.7.1 %s may send only from their own addresses, not <%s>" % (session.user, address)
        return _SpoolingHandler.mail(self, session, address, params)

    def rcpt(self, session, address):
        _, dom = split_address(address)
        if not dom:
            return 550, "5.1.3 Bad recipient address syntax"
        if self.policy.is_local_domain(dom):
            return self.local_rcpt(address)
        if not session.user:
            return 550, "5.7.1 Relaying denied: authenticate first"
        return "out"
