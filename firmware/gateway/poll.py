# One poll cycle: first the outbound flush (so replies the office wrote go
# out before new mail comes in), then the ODMR pull, then the hand-off of
# everything pulled (and any bounce) to the mailboxes.
from gateway import log


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
    def __init__(self, cfg, spool, policy, mailboxes, board):
        from gateway.outbound import Outbound

        self.cfg = cfg
        self.spool = spool
        self.policy = policy
        self.mailboxes = mailboxes
        self.board = board
        self.outbound = Outbound(cfg, spool, policy, board.now)
        self.session_buf = None  # the turned line's receive buffer, kept once made

    async def run(self):
        try:
            return await self._run()
        except Exception as e:  # noqa: BLE001 - the scheduler must go on; the spool is safe
            log.error("poll: cycle failed: %r" % (e,))
            return Result(False, True, "cycle failed: %r" % (e,))

    async def _run(self):
        from gateway import odmr
        from gateway.policy import InboundHandler

        from gateway.odmr import session_buffer

        if self.session_buf is None and (self.cfg.get("relay") or {}).get("host"):
            self.session_buf = session_buffer()
        sent = await self.outbound.flush()
        self.board.feed_watchdog()
        # The mailboxes get the pulled mail in one hand-off at the end, so the
        # provider's delivery is not slowed down message by message.
        handler = InboundHandler(self.cfg, self.spool, self.policy)
        pulled = await odmr.pull(self.cfg, handler, self.session_buf)
        self.board.feed_watchdog()
        self._deliver(self.spool)
        relay_ok = pulled.ok or pulled.code == 0
        ok = relay_ok and not sent.error
        retry = (not relay_ok and pulled.retry) or (sent.error is not None and sent.temporary)
        line = "relay: %s; smarthost: %s" % (pulled.text, sent)
        (log.info if ok else log.warn)("poll: " + line)
        return Result(ok, retry, line)

    def _deliver(self, spool):
        if self.mailboxes is not None:
            self.mailboxes.deliver_pending(spool)
