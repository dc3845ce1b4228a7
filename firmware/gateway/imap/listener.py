# The IMAP listener. It is all of IMAP that stays loaded while no IMAP
# client is connected: the session's code (gateway.imap.session and what it
# loads, some 48 KB on the 32-bit build) comes in with the first client and
# goes back to the heap when the last one leaves.
from gateway.compat import drop_modules

_CODE = ("gateway.imap.session", "gateway.imap.parse", "gateway.imap.folder", "gateway.imap.slots",
         "gateway.imap.folders", "gateway.imap.fetch", "gateway.imap.mime", "gateway.imap.search")


async def serve(cfg, boxes, host):
    """The IMAP listener on cfg's imap.port for imap.sessions at once
    (gateway.guard.listen says who is refused). STARTTLS is offered with
    POP3's certificate (pop3.cert, pop3.key)."""
    from gateway import log
    from gateway.compat import server_tls
    from gateway.guard import listen

    port, max_sessions = cfg["imap"]["port"], cfg["imap"]["sessions"]
    log.info("listening on %s: imap %d" % (host, port))

    tls = server_tls(cfg["pop3"], "pop3")
    running = [0]

    def make(reader, writer, ip):
        from gateway.imap.session import IMAPSession  # a MemoryError here: the client is refused

        return _Session(IMAPSession(reader, writer, boxes, tls, ip), running)

    return await listen(host, port, max_sessions, boxes.policy, make, "* BYE your network may not use this server",
                        "* BYE [UNAVAILABLE] ", "imap")


class _Session:
    """Runs one session; the last one to end drops IMAP's code."""

    def __init__(self, session, running):
        self.session = session
        self.running = running
        running[0] += 1

    async def run(self):
        try:
            await self.session.run()
        finally:
            self.session = None
            self.running[0] -= 1
            if not self.running[0]:
                drop_modules(_CODE)
