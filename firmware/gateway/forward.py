# Optional forwarding: mail for some users, or for every user of a domain,
# goes on to an internal SMTP host (say the office's groupware server)
# instead of into a mailbox. cfg["forward"] = {"bob": "10.0.0.5:25",
# "sales.example.test": "10.0.0.6"}; the key is a user name or a domain.
#
# The message stays in the spool's "local" queue until the internal host has
# said 250; a 4xx or a dead host leaves it there for the next try. A 5xx for
# a recipient is never a loss: that copy goes into the user's mailbox
# instead. A crash between the host's 250 and spool.done sends it again (a
# duplicate, the price RFC 5321 6.1 accepts, never a loss).
import asyncio

from gateway import log
from gateway.compat import drop_modules
from gateway.wire import SMTPError

# The client's code, loaded for a flush and dropped after it (the poll
# cycle drops and reloads the same modules): a resident module never holds
# the classes of a dropped one.
CLIENT = ("gateway.smtp.submit", "gateway.smtp.client")


def parse_target(text):
    """(host, port) from "host" or "host:port"."""
    host, _, port = text.partition(":")
    return host, int(port) if port else 25


class Forwarder:
    """Sends what waits for an internal host, with the SMTP client the
    smarthost flush uses (in clear: the host is on the office LAN). The
    App makes it with the mailboxes that take what a host refuses."""

    TIMEOUT = 120  # s for one whole SMTP conversation

    def __init__(self, cfg, policy, mailboxes):
        self.hostname = cfg["hostname"]
        self.policy = policy
        self.mailboxes = mailboxes
        self.busy = False
        self.again = False

    def kick(self, spool):
        """Start a flush in the background (Mailboxes.deliver_pending calls
        this whenever it left recipients for forwarding, so every delivery
        pass, the poll cycle's included, retries); one flush at a time, so
        two overlapping flushes never send a message twice."""
        if self.busy:
            self.again = True
            return
        run = self._run(spool)
        try:
            asyncio.create_task(run)
        except RuntimeError:  # no event loop yet (boot): the next delivery kicks
            run.close()
            return
        self.busy = True

    async def _run(self, spool):
        try:
            self.again = True
            while self.again:
                self.again = False
                await self.flush(spool)
        except Exception as e:  # a background task must log, not vanish
            log.error("forward: %r" % (e,))
        finally:
            self.busy = False
            drop_modules(CLIENT)

    async def flush(self, spool):
        """Forwards every pending "local" recipient that has a forward
        target; returns how many recipients the internal hosts took. A 4xx,
        a dead host or a timeout leaves a recipient for the next try; a 5xx
        sends it to its mailbox instead."""
        boxes = self.mailboxes
        sent = 0
        fell_back = False
        for id in spool.walk("local"):
            env = spool.envelope(id)
            groups = {}
            with env.recipients("local") as rcpts:
                for _, addr, _ in rcpts:
                    target = self.policy.forward_for(addr)
                    if target and not boxes.kept_here(id, addr):
                        groups.setdefault(target, []).append(addr)
            for target, addrs in groups.items():
                try:
                    results = await asyncio.wait_for(self._send(target, env, addrs, spool), self.TIMEOUT)
                except (SMTPError, asyncio.TimeoutError) as e:
                    log.warn("forward: %s to %s not sent (%r), tried again later" % (id, target, e))
                    continue
                ok = [r.address for r in results if r.delivered]
                if ok:
                    spool.done(id, "local", ok)
                    sent += len(ok)
                    log.info("forward: %s to %s for %d recipient(s)" % (id, target, len(ok)))
                for r in results:
                    if r.code >= 500:
                        log.warn("forward: %s refused <%s> of %s (%d %s); kept in the mailbox" % (
                            target, r.address, id, r.code, r.text))
                        boxes.keep_here(id, r.address)
                        fell_back = True
        if fell_back:
            spool.rescan = True  # what the forward host refused is the hand-off's again
            boxes.deliver_pending(spool)
        return sent

    async def _send(self, target, env, addrs, spool):
        """The Results (gateway.smtp.submit) of one message to one host."""
        from gateway.smtp.client import SMTPClient
        from gateway.smtp.submit import send_message

        host, port = parse_target(target)
        client = await SMTPClient.connect(host, port, "forward host " + target)
        try:
            await client.greeting()
            await client.ehlo(self.hostname)
            with spool.open(env.id, env) as body:
                return await send_message(client, env.mail_from, addrs, body, env.size)
        finally:
            await client.quit()
