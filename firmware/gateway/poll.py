# One poll cycle: first the outbound flush (so replies the office wrote go
# out before new mail comes in), then the ODMR pull, then the hand-off of
# everything pulled (and any bounce) to the mailboxes.
from gateway import log
from gateway.compat import drop_modules

# The flush's code, dropped once it is done: the pull and the sessions
# beside it get its heap. The client goes with it (odmr.CUSTOMER reloads
# it): a resident module must never hold the classes of a dropped one.
_FLUSH = ("gateway.outbound", "gateway.smtp.submit", "gateway.dsn", "gateway.smtp.client", "gateway.tls")
# The pull's code, dropped when the cycle ends, however the pull ended.
_PULL = ("gateway.odmr", "gateway.smtp.client", "gateway.tls")


class Result:
    """.ok (the cycle did its job), .retry (a failure worth trying again
    soon, with backoff) and .summary (one line for the console)."""

    def __init__(self, ok, retry, summary):
        self.ok = ok
        self.retry = retry
        self.summary = summary

    def __repr__(self):
        return "Result(ok=%r, retry=%r, %r)" % (self.ok, self.retry, self.summary)


class PollCycle:
    HANDOFF = 50  # pulled messages between hand-offs to the mailboxes
    BODY_BUFFER = 1024  # the flush's client streams messages through it (SMTPClient.chunk_size)

    def __init__(self, cfg, spool, policy, mailboxes, board, session_buf):
        self.cfg = cfg
        self.spool = spool
        self.policy = policy
        self.mailboxes = mailboxes
        self.board = board
        # Outbound's pauses between tries (id -> (tries, not before)): kept
        # here, so its code need not stay loaded between cycles.
        self.retry = {}
        # The turned line's receive buffer (odmr.session_buffer()), made by
        # the app at start-up: a 4 KB block may not exist later.
        self.session_buf = session_buf
        # The flush reads its replies into that buffer too (the pull comes
        # after it), and streams through this one, made here for the same
        # reason.
        self.body_buf = bytearray(self.BODY_BUFFER)
        import asyncio

        asyncio.open_connection  # noqa: B018 - asyncio's stream module, loaded now rather than mid-cycle
        # The TLS contexts (1,764 bytes in one block, and the CA), made now
        # and kept: made at each connection, the first at boot found no
        # such block on a heap the boot's hand-off had cut up. One per CA
        # file, which the relay and the smarthost of one provider share.
        self.contexts = {}
        for what in ("relay", "smarthost"):
            self._context(what)
        drop_modules(("gateway.tls",))

    async def run(self):
        try:
            return await self._run()
        except Exception as e:  # noqa: BLE001 - the scheduler must go on; the spool is safe
            log.error("poll: cycle failed: %r" % (e,))
            return Result(False, True, "cycle failed: %r" % (e,))

    async def _run(self):
        error, temporary, sent = await self._flush()
        self.board.feed_watchdog()
        relay_ok, relay_retry, pulled = await self._pull()
        self.board.feed_watchdog()
        self.mailboxes.deliver_pending(self.spool)
        ok = relay_ok and not error
        retry = (not relay_ok and relay_retry) or (error is not None and temporary)
        line = "relay: %s; smarthost: %s" % (pulled, sent)
        (log.info if ok else log.warn)("poll: " + line)
        return Result(ok, retry, line)

    async def _pull(self):
        """(ok, retry, summary) of the ODMR pull, as plain values; its code
        is dropped before the last hand-off, which gets its heap."""
        from gateway import odmr
        from gateway.handlers import InboundHandler

        # The mailboxes get the pulled mail every HANDOFF messages and at the
        # end, not one by one (the provider's delivery is not slowed down
        # message by message), and the spool's list of pending ids stays
        # short (1000 ids take one 8 KB block a cut-up heap may not have).
        self.taken = 0
        handler = InboundHandler(self.cfg, self.spool, self.policy, self._taken)
        pulled = await odmr.pull(self.cfg, handler, self.session_buf, ctx=self._context("relay"))
        pulled = pulled.ok or pulled.code == 0, pulled.retry, pulled.text
        odmr = handler = None
        drop_modules(_PULL)
        return pulled

    async def _flush(self):
        """(error, temporary, summary) of the outbound flush, as plain
        values: nothing of the flush's code is held once it is dropped."""
        if not self.spool.ids("out", "", 1):
            return None, False, "nothing to send"
        from gateway.outbound import Outbound

        sent = await Outbound(self.cfg, self.spool, self.policy, self.board.now, self.retry,
                              (self.session_buf, self.body_buf), self._context("smarthost")).flush()
        sent = sent.error, sent.temporary, str(sent)
        drop_modules(_FLUSH)
        return sent

    def _context(self, what):
        """The TLS context for cfg[what], made at its first call; None with
        TLS off, no host, or a CA it cannot use (the connection says why)."""
        conf = self.cfg[what]
        if conf["tls"] == "none" or not conf["host"]:
            return None
        ca = conf["ca"]
        if ca not in self.contexts:
            from gateway import tls
            from gateway.wire import SMTPError

            try:
                self.contexts[ca] = tls.context(conf, what)
            except SMTPError:
                return None
        return self.contexts[ca]

    def _taken(self, spool):
        self.taken += 1
        if self.taken % self.HANDOFF == 0:
            self.mailboxes.deliver_pending(spool)
