# The SMTP handlers of the box's two listeners: the provider's delivery
# after ATRN (InboundHandler) and the office LAN (LanHandler). The SMTP
# engine knows nothing about users or relaying: it asks these at each step
# (aiosmtpd style), and they ask the address book (gateway.policy).
from gateway import log
from gateway.policy import split_address
from gateway.smtp.server import Handler


class _SpoolingHandler(Handler):
    """What both listeners share: limits from the config, the spool, quota
    checks by the transaction's declared size (session.size), and the
    hand-offs after the 250, decided by the queues of the message that got
    it. No transaction state is kept here: a pipelined MAIL may already
    have started the next transaction."""

    def __init__(self, cfg, spool, policy, on_delivered=None, on_outbound=None):
        self.max_size = cfg["smtp"]["max_size"]
        self.hostname = cfg["hostname"]
        self.spool = spool
        self.policy = policy
        self.on_delivered = on_delivered
        self.on_outbound = on_outbound

    def local_rcpt(self, session, address):
        refusal = self.policy.check_local_rcpt(address, session.size)
        if refusal:
            return refusal
        return "local"

    def delivered(self, session, id, queues):
        # on_delivered(spool) is Mailboxes.deliver_pending: local mail lands in
        # the mailbox at once (and forwarding starts); on_outbound() pokes the
        # scheduler.
        if self.on_delivered and "local" in queues:
            try:
                self.on_delivered(self.spool)
            except Exception as e:  # the 250 is out: the mail waits in the spool
                log.error("delivery of %s failed, kept in the spool: %r" % (id, e))
        if self.on_outbound and "out" in queues:
            self.on_outbound()


class InboundHandler(_SpoolingHandler):
    """The provider's delivery after ATRN: only our own users, never a relay."""

    def __init__(self, cfg, spool, policy, on_delivered=None):
        _SpoolingHandler.__init__(self, cfg, spool, policy, on_delivered)

    def rcpt(self, session, address):
        _, dom = split_address(address)
        if not dom or not self.policy.is_local_domain(dom):
            return 550, "5.7.1 Relaying denied: not a domain of this gateway"
        return self.local_rcpt(session, address)


class LanHandler(_SpoolingHandler):
    """Office PCs: only listed networks may connect; local mail is delivered
    at once; outside mail needs AUTH, so the box is never an open relay."""

    login_timeout = 60  # s between commands before AUTH (a client sends them at once)

    def __init__(self, cfg, spool, policy, on_delivered=None, on_outbound=None, tls=None):
        _SpoolingHandler.__init__(self, cfg, spool, policy, on_delivered, on_outbound)
        self.tls = tls
        self.clear_text = cfg["clear_text_logins"]

    def connect(self, session):
        if not self.policy.allowed_peer(session.peer):
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
        return None

    def rcpt(self, session, address):
        _, dom = split_address(address)
        if not dom:
            return 550, "5.1.3 Bad recipient address syntax"
        if self.policy.is_local_domain(dom):
            return self.local_rcpt(session, address)
        if not session.user:
            return 550, "5.7.1 Relaying denied: authenticate first"
        return "out"
