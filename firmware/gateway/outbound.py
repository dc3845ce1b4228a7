# The outbound flush: the office's outgoing mail (spool queue "out") goes to
# the smarthost, the provider's submission service (587, STARTTLS + AUTH).
# A recipient leaves the spool only after the smarthost's 250 for it; a 4xx
# keeps it, with a growing pause before that message is tried again; a 5xx,
# or a message older than poll.bounce_after, becomes an RFC 3464 bounce in
# the sender's own mailbox (spool queue "local"). Only a failure with no
# mailbox to report to (a null sender, or one no longer in the config) is
# dropped, and that is logged and counted as dropped, never as bounced.
from gateway import log
from gateway.smtp import submit
from gateway.smtp.client import SMTPClient
from gateway.wire import SMTPError

RETRY_MIN = 300  # first pause after a 4xx, doubled per try
RETRY_MAX = 4 * 3600


BOUNCED = "bounced"
DROPPED = "dropped"


class Summary:
    """What a flush did: .sent .deferred .bounced .dropped (messages) and
    .error (the sentence of a failure that stopped it, else None)."""

    def __init__(self):
        self.sent = self.deferred = self.bounced = self.dropped = 0
        self.error = None
        self.temporary = True

    def failed(self, fate):
        if fate == BOUNCED:
            self.bounced += 1
        else:
            self.dropped += 1

    def __str__(self):
        if not (self.sent or self.deferred or self.bounced or self.dropped or self.error):
            return "nothing to send"
        s = "sent %d, deferred %d, bounced %d" % (self.sent, self.deferred, self.bounced)
        if self.dropped:
            s += ", dropped %d (no mailbox for the sender, see the log)" % self.dropped
        return s + ("; " + self.error if self.error else "")


class Outbound:
    """One flush. `retry` holds the per-message pauses between flushes (the
    caller keeps it, in RAM: after a reboot every message is simply tried at
    the next cycle)."""

    BATCH = 16  # "out" ids listed at a time (Spool.walk)
    # Messages whose pause is remembered; past that many, one deferred is
    # simply tried again at the next flush (as after a reboot), so a
    # smarthost that defers 10,000 one by one does not fill the heap.
    PAUSES = 64

    def __init__(self, cfg, spool, policy, clock, retry=None, bufs=(None, None), ctx=None):
        """bufs: (replies, body), bytearrays the caller made beforehand for
        the client (the poll lends the turned line's buffer and one of
        SMTPClient.chunk_size): a 1 KB body buffer made at the first
        message failed the office day's flush on a cut-up heap. ctx: the
        smarthost's TLS context, made beforehand too (else made here)."""
        self.cfg = cfg
        self.spool = spool
        self.policy = policy
        self.clock = clock
        self.bounce_after = cfg["poll"]["bounce_after"]
        self.retry = {} if retry is None else retry  # id -> (tries, not before)
        self.bufs = bufs
        self.ctx = ctx

    async def flush(self):
        """Walks the "out" queue oldest first, BATCH ids at a time (memory
        flat in the number waiting), opening the line at the first message
        that is due. Once the line is refused or gone, the rest that is due
        counts as deferred; old mail is still bounced on the way."""
        out = Summary()
        conf = self.cfg["smarthost"]
        client = None
        try:
            for id in self.spool.walk("out", self.BATCH):
                env = self.spool.envelope(id)
                if not self._due(env, out):
                    continue
                if client is None and out.error is None:
                    client = await self._open(conf, out)
                if client is None:
                    out.deferred += 1
                    continue
                try:
                    await self._send(client, env, out)
                except SMTPError as e:
                    # The line is gone: this and the rest stay for next time.
                    out.deferred += 1
                    out.error = "%d %s" % (e.code, e.text)
                    await client.quit()
                    client = None
        finally:
            if client is not None:
                await client.quit()
        return out

    def _due(self, env, out):
        """Whether env is to be sent now; one past bounce_after is given up."""
        now = self.clock()
        if now - env.received > self.bounce_after:
            text = "4.4.7 Gave up after %d days of trying" % (self.bounce_after // 86400)
            self._give_up(env, [(a, 0, text) for a in _out(env)], out)
            return False
        if self.retry.get(env.id, (0, 0))[1] > now:
            out.deferred += 1
            return False
        return True

    async def _open(self, conf, out):
        """The smarthost line, or None with out.error saying why."""
        if not conf["host"]:
            out.error = "no smarthost configured (smarthost.host): outgoing mail waits"
            return None
        try:
            client = await SMTPClient.open(conf, self.cfg["hostname"], "smarthost", self.bufs[0], self.ctx)
            client.buf = self.bufs[1]
            return client
        except SMTPError as e:
            out.error, out.temporary = "%d %s" % (e.code, e.text), e.temporary
            return None

    async def _send(self, client, env, out):
        id = env.id
        rcpts = _out(env)
        with self.spool.open(id, env) as body:
            results = await submit.send_message(client, env.mail_from, rcpts, body, env.size)
        sent = [r.address for r in results if r.delivered]
        failed = [(r.address, r.code, r.text) for r in results if r.code >= 500]
        later = len(results) - len(sent) - len(failed)
        fate = self._bounce(env, failed, self.cfg["smarthost"]["host"]) if failed else None
        if failed and not fate:
            later += len(failed)  # no room for the bounce yet: try it all again later
            failed = []
        if sent or failed:
            self.spool.done(id, "out", sent + [a for a, _, _ in failed])
        log.info("smarthost: %s: %d sent, %d failed, %d deferred" % (id, len(sent), len(failed), later))
        if later:
            tries = self.retry.get(id, (0, 0))[0] + 1
            if id in self.retry or len(self.retry) < self.PAUSES:
                self.retry[id] = (tries, self.clock() + min(RETRY_MIN << (tries - 1), RETRY_MAX))
            out.deferred += 1
        else:
            self.retry.pop(id, None)
            out.sent += 1 if sent else 0
            if failed:
                out.failed(fate)

    def _give_up(self, env, failed, out):
        fate = self._bounce(env, failed, None)
        if fate:
            self.spool.done(env.id, "out", [a for a, _, _ in failed])
            self.retry.pop(env.id, None)
            out.failed(fate)
        else:
            out.deferred += 1

    def _bounce(self, env, failed, remote):
        """The DSN into the sender's mailbox: BOUNCED; DROPPED (logged) when
        there is no mailbox to put it in; None if it cannot be stored now
        (card full), in which case the message must stay."""
        sender = env.mail_from
        if not sender:
            log.warn("smarthost: %s: a bounce that bounced, dropped (RFC 3464: never bounce a bounce)" % env.id)
            return DROPPED
        if self.policy.user_for(sender) is None:
            # The LAN listener takes only a user's own address as sender, so
            # this is mail queued before that user left the config.
            log.warn("smarthost: %s: dropped: sender %s has no mailbox here for the bounce (%d %s for %s)" % (
                env.id, sender, failed[0][1], failed[0][2], failed[0][0]))
            return DROPPED
        from gateway import dsn
        from gateway.spool import SpoolFull

        try:
            draft = self.spool.begin("", [(sender, "local")])
        except SpoolFull:
            return None
        try:
            with self.spool.open(env.id, env) as body:
                dsn.write(draft, self.cfg["hostname"], env, failed, self.clock(), body, remote)
            draft.commit()
        except BaseException:
            draft.abort()
            raise
        log.info("smarthost: %s: bounce for %d recipient(s) to %s" % (env.id, len(failed), sender))
        return BOUNCED


def _out(env):
    return env.addresses("out")
