# The ODMR customer (RFC 2645): dial the provider, log in, say ATRN for our
# domains, and on "250" turn the line around: the box greets with 220 and
# the provider delivers the held mail to the box's SMTP receiver over the
# same connection, until it says QUIT or hangs up.
from gateway import log
from gateway.compat import drop_modules

# The turned line's receive buffer (the receiver's SMTPSession takes any
# size that holds a command line and a text line; 4 KB as its own).
BUFFER = 4096
# What only the customer's half of the session needs, dropped at the turn:
# the receiver's code then fits where it was. SASL stays when a resident
# part shares it (the LAN listener's AUTH).
CUSTOMER = ("gateway.smtp.client", "gateway.tls")
# The provider scans its queue before it answers ATRN; Exim's documentation
# says to wait up to 10 minutes.
ATRN_TIMEOUT = 600

# What each ATRN reply means (RFC 2645 section 5), as the console shows it.
_MEANING = {
    250: "reversing the connection",
    450: "ATRN request refused",
    451: "the relay cannot process ATRN now",
    453: "no mail waiting",
    502: "the relay does not implement ATRN",
    530: "the relay wants a login first",
    535: "the relay refused the login",
}


class Outcome:
    """The result of one pull: .code (the relay's reply or our local code),
    .text, .retry (worth trying again soon) and .pulled (messages taken)."""

    def __init__(self, code, text, retry=False, pulled=0):
        self.code = code
        self.text = text
        self.retry = retry
        self.pulled = pulled

    @property
    def ok(self):
        return self.code in (250, 453)

    def __repr__(self):
        return "Outcome(%d, %r, retry=%r, pulled=%d)" % (self.code, self.text, self.retry, self.pulled)


class _Counting:
    """The receiver's handler, counting the messages that got their 250."""

    def __init__(self, handler):
        self.handler = handler
        self.count = 0

    def __getattr__(self, name):
        return getattr(self.handler, name)

    def delivered(self, session, id, queues):
        self.count += 1
        self.handler.delivered(session, id, queues)


def session_buffer():
    """The receiver's input buffer for the turned line (the client reads
    its replies into it before the turn). Made before the connection (and
    the TLS handshake) cut the heap up, or kept by the caller from
    start-up: a 4 KB block may not exist later."""
    return bytearray(BUFFER)


async def pull(cfg, handler, buf=None, unload=CUSTOMER, ctx=None):
    """One ODMR session with cfg["relay"] (cfg validated); handler is an InboundHandler,
    or a function that makes one (called only once the line has turned);
    ctx, the relay's TLS context if the caller made it beforehand.
    The modules named in `unload` are dropped at the turn (a process that
    does nothing else, like board/unix/pull_once.py, drops SASL too).
    Never raises for network or protocol trouble: the Outcome says it."""
    from gateway.smtp.client import SMTPClient
    from gateway.wire import SMTPError

    conf = cfg["relay"]
    host = conf["host"]
    if not host:
        return Outcome(0, "no relay configured (relay.host)")
    if buf is None:
        buf = session_buffer()
    domains = cfg["domains"]
    try:
        # The client reads its replies into the turned line's buffer too:
        # the provider says nothing between its 250 and our 220.
        client = await SMTPClient.open(conf, cfg["hostname"], "relay", buf, ctx)
    except SMTPError as e:
        return _failed(e)
    try:
        if "ATRN" not in client.ext:
            raise SMTPError(502, "5.5.1 relay %s does not offer ATRN: is this an ODMR (RFC 2645) port?" % host)
        code, lines = await client.command("ATRN " + ",".join(domains), ATRN_TIMEOUT)
        if code == 250 and client.lines.pending():
            raise SMTPError(421, "4.5.0 relay %s sent data before the box greeted it" % host)
    except SMTPError as e:
        await (client.quit() if e.code != 421 else client.close())
        return _failed(e)
    text = " ".join(lines)
    if code != 250:
        await client.quit()
        meaning = _MEANING.get(code) or ("the relay refused ATRN" if code >= 500 else "the relay deferred ATRN")
        out = Outcome(code, "%s (%d %s)" % (meaning, code, text), retry=400 <= code < 500 and code != 453)
        (log.info if code == 453 else log.warn if code < 500 else log.error)("relay: " + out.text)
        return out
    log.info("relay: ATRN accepted for %s, serving the delivery" % ",".join(domains))
    reader, writer = client.reader, client.writer
    client = SMTPClient = SMTPError = None
    drop_modules(unload)
    if not hasattr(handler, "rcpt"):
        handler = handler()
    n = await _serve(reader, writer, handler, host, buf)
    return Outcome(250, "pulled %d message(s)" % n, pulled=n)


async def _serve(reader, writer, handler, peer, buf):
    """The turned line: our 220, then the provider is an SMTP client."""
    from gateway.smtp.server import SMTPSession

    counting = _Counting(handler)
    await SMTPSession(reader, writer, counting, peer, buf).run(greet=True)
    log.info("relay: delivery ended, %d message(s) taken" % counting.count)
    return counting.count


def _failed(e):
    (log.error if e.code >= 500 else log.warn)("relay: %d %s" % (e.code, e.text))
    return Outcome(e.code, e.text, retry=e.temporary)
