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

DEFAULT_PORT = 587
BOUNCE_AFTER = 5 * 86400  # Postfix's maximal_queue_lifetime
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

    def __init__(self, cfg, spool, policy, clock, retry=None):
        self.cfg = cfg
        self.spool = spool
        self.policy = policy
        self.clock = clock
        poll = cfg.get("poll") or {}
        self.bounce_after = poll.get("bounce_after") or BOUNCE_AFTER
        self.retry = {} if retry is None else retry  # id -> (tries, not before)

    async def flush(self):
        out = Summary()
        ids = self.spool.ids("out")
        conf = self.cfg.get("smarthost") or {}
        now = self.clock()
        due = []
        for id in ids:
            env = self.spool.envelope(id)
            if now - env.received > self.bounce_after:
                text = "4.4.7 Gave up after %d days of trying" % (self.bounce_after // 86400)
                self._give_up(env, [(a, 0, text) for a in _out(env)], out)
            elif self.retry.get(id, (0, 0))[1] <= now:
                due.append(id)
            else:
                out.deferred += 1
        if not due:
            return out
        if not conf.get("host"):
            out.deferred += len(due)
            out.error = "no smarthost configured (smarthost.host): outgoing mail waits"
            return out
        try:
            client = await SMTPClient.open(conf, DEFAULT_PORT, self.cfg.get("hostname") or "gateway", "smarthost")
        except SMTPError as e:
            out.deferred += len(due)
            out.error, out.temporary = "%d %s" % (e.code, e.text), e.temporary
            return out
        try:
            for i, id in enumerate(due):
                try:
                    await self._send(client, id, out)
                except SMTPError as e:
                    # The line is gone: this and the rest stay for next time.
                    out.deferred += len(due) - i
                    out.error = "%d %s" % (e.code, e.text)
                    return out
        finally:
            await client.quit()
        return out

    async def _send(self, client, id, out):
        env = self.spool.envelope(id)
        rcpts = _out(env)
        with self.spool.open(id, env) as body:
            results = await submit.send_message(client, env.mail_from, rcpts, body, env.size)
        sent = [a for a, code, _ in results if 200 <= code < 300]
        failed = [(a, code, text) for a, code, text in results if code >= 500]
        later = len(results) - len(sent) - len(failed)
        fate = self._bounce(env, failed, (self.cfg.get("smarthost") or {}).get("host")) if failed else None
        if failed and not fate:
            later += len(failed)  # no room for the bounce yet: try it all again later
            failed = []
        if sent or failed:
            self.spool.done(id, "out", sent + [a for a, _, _ in failed])
        log.info("smarthost: %s: %d sent, %d failed, %d deferred" % (id, len(sent), len(failed), later))
        if later:
            tries = self.retry.get(id, (0, 0))[0] + 1
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
                dsn.write(draft, self.cfg.get("hostname") or "gateway", env, failed, self.clock(), body, remote)
            draft.commit()
        except BaseException:
            draft.abort()
            raise
        log.info("smarthost: %s: bounce for %d recipient(s) to %s" % (env.id, len(failed), sender))
        return BOUNCED


def _out(env):
    return [a for a, q in env.rcpts if q == "out"]
