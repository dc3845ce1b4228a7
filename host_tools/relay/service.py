"""The running relay: listeners, the ATRN turn, the outbox flush and expiry."""
import asyncio
import logging
import signal
import sys
import threading
import time
import warnings

from host_tools.relay import dsn, odmr, smtp_in
from host_tools.relay.auth import Accounts, Throttle, Window
from host_tools.relay.client import Client, canonical
from host_tools.relay.config import domain_of
from host_tools.relay.groupcommit import GroupCommit
from host_tools.relay.store import OUTBOX, Store, boxes_for, domain_box
from host_tools.relay.wire import ProtocolError

log = logging.getLogger("relay")
_BROKEN = (EOFError, OSError, ProtocolError, asyncio.TimeoutError)


class Relay:
    REMOVALS_PER_SYNC = 50      # delivered messages per directory fsync in a drain

    def __init__(self, cfg):
        self.cfg = cfg
        self.store = Store(cfg.queue)
        self.committer = GroupCommit(self.store)
        self.accounts = Accounts(cfg.accounts)
        lim = cfg.limits
        self.throttle = Throttle(lim["auth_fail_delay"], lim["auth_max_failures"], lim["auth_block"])
        self.held = cfg.held_domains
        self.bounced = Window(lim["bounce_window"])     # bounces sent per outside sender
        self._bounce_lock = threading.Lock()            # bounce() runs in worker threads
        self.busy = set()               # boxes a session is draining right now
        self.sessions = set()           # running ODMR session tasks
        self._outbox_kick = asyncio.Event()

    # -- accepting mail ----------------------------------------------------------
    async def accept(self, mail_from, rcpts, data, origin=""):
        """Queue mail for held domains, one box per domain; durable on return."""
        id = await self.committer.commit(mail_from, boxes_for(rcpts), canonical(data), origin)
        log.info("queued %s from <%s> for %d recipient(s) (%s)", id, mail_from, len(rcpts), origin)
        return id

    async def accept_outgoing(self, mail_from, rcpts, data, origin=""):
        id = await self.committer.commit(mail_from, {OUTBOX: rcpts}, canonical(data), origin)
        log.info("outbox %s from <%s> for %d recipient(s) (%s)", id, mail_from, len(rcpts), origin)
        self._outbox_kick.set()
        return id

    def bounce(self, env, failures, why, message):
        """Send `env`'s sender a DSN for `failures` (address -> Reply-like
        (status, text)). Where it goes: a held domain's queue when the sender
        is one of ours, else the outbox (next_hop); never for a null sender.
        An outside sender gets at most limits.bounces_per_sender within
        limits.bounce_window: senders are forged, and the rest would be
        backscatter to whoever was named."""
        if not env.mail_from:
            log.warning("dropping failure report for %s: the sender is null (a bounce is never bounced)", env.id)
            return None
        dom = domain_of(env.mail_from)
        box = domain_box(dom) if dom in self.held else OUTBOX
        if box == OUTBOX and not self._may_bounce_to(env.mail_from.lower()):
            log.warning("no bounce for %s to <%s>: %d sent to that sender within %gs already (limits.bounces_per_sender)",
                        env.id, env.mail_from, self.cfg.limits["bounces_per_sender"], self.cfg.limits["bounce_window"])
            return None
        report = dsn.build(self.cfg.hostname, env, failures, message, why)
        id = self.store.commit("", {box: [env.mail_from]}, report, origin=f"dsn for {env.id}")
        log.info("bounce %s for %s to <%s> via %s", id, env.id, env.mail_from, box)
        if box == OUTBOX:
            self._outbox_kick.set()
        return id

    def _may_bounce_to(self, sender):
        with self._bounce_lock:
            if self.bounced.count(sender) >= self.cfg.limits["bounces_per_sender"]:
                return False
            self.bounced.add(sender)
            return True

    # -- ODMR --------------------------------------------------------------------
    def claim(self, domains):
        """Reserve domains for one ATRN session: (250, ...) or the refusal."""
        boxes = [domain_box(d) for d in domains]
        busy = [d for d, b in zip(domains, boxes) if b in self.busy]
        if busy:
            return 451, f"4.3.0 {busy[0]} is being drained by another session, try later"
        if not any(self.store.has_mail(b) for b in boxes):
            return 453, "4.2.0 you have no mail"
        self.busy.update(boxes)
        return 250, ""

    def release(self, domains):
        self.busy.difference_update(domain_box(d) for d in domains)

    async def turn(self, domains, lines, writer, user):
        """After `250 OK now reversing`: be the SMTP client on the customer's line."""
        client = Client(lines, writer, self.cfg.hostname, self.cfg.limits["turn_timeout"])
        counts = [0, 0, 0]
        try:
            await client.greet()
            for d in domains:
                await self.deliver_box(client, domain_box(d), counts)
            await client.quit()
        except _BROKEN as e:
            log.warning("odmr: %s: line lost after the turn (%s); undelivered mail stays queued", user, str(e) or type(e).__name__)
        log.info("odmr: %s: %d delivered, %d deferred, %d bounced", user, *counts)

    async def deliver_box(self, client, box, counts):
        """Send every message in `box` (including ones arriving meanwhile) once;
        counts: [delivered, deferred, bounced] messages, updated in place.
        A message done with leaves the queue at once (unqueue); the disk is
        told every REMOVALS_PER_SYNC messages and at the end (sweep), so a
        power cut may bring back that many, a kill -9 none but the one in
        flight: at-least-once either way."""
        seen = set()
        done = []
        try:
            while True:
                todo = [e for e in self.store.list(box) if e.id not in seen]
                if not todo:
                    return
                for env in todo:
                    seen.add(env.id)
                    data = self.store.read(env)
                    if data is None:
                        continue        # dropped by the admin meanwhile (or damaged: logged)
                    result = await client.send(env.mail_from, env.rcpts, data)
                    if result.failed:
                        failures = {r: (rep.status(), str(rep)) for r, rep in result.failed.items()}
                        await asyncio.to_thread(self.bounce, env, failures, "the recipient's server refused it", data)
                        counts[2] += 1
                    if result.pending:
                        await asyncio.to_thread(self.store.update, env, result.pending)
                        counts[1] += 1
                        continue
                    if self.store.unqueue(env):
                        done.append(env)
                    counts[0] += bool(result.delivered)
                    if len(done) >= self.REMOVALS_PER_SYNC:
                        await asyncio.to_thread(self.store.sweep, box, done)
                        done = []
        finally:
            if done:
                self.store.sweep(box, done)     # not in a thread: a shutdown's cancel must not skip it

    # -- outbox ------------------------------------------------------------------
    async def flush_outbox(self):
        if not self.cfg.next_hop or OUTBOX in self.busy or not self.store.has_mail(OUTBOX):
            return
        self.busy.add(OUTBOX)
        host, port = self.cfg.next_hop
        client = None
        counts = [0, 0, 0]
        try:
            client = await Client.connect(host, port, self.cfg.hostname, self.cfg.limits["timeout"])
            await client.greet()
            await self.deliver_box(client, OUTBOX, counts)
            await client.quit()
        except _BROKEN as e:
            log.warning("outbox: next hop %s:%d failed (%s); retrying later", host, port, str(e) or type(e).__name__)
        finally:
            self.busy.discard(OUTBOX)
            if client:
                await client.close()
        if any(counts):
            log.info("outbox: %d delivered, %d deferred, %d bounced", *counts)

    async def _outbox_loop(self):
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
            # cancel that lands as the kick fires, and then shutdown hangs.
            try:
                async with asyncio.timeout(self.cfg.retry_interval):
                    await self._outbox_kick.wait()
            except TimeoutError:
                pass
            self._outbox_kick.clear()
            await _survive(self.flush_outbox(), "outbox")

    # -- expiry ------------------------------------------------------------------
    def expired(self, now=None):
        """{box: [envelope]} older than limits.expire_after. Without a next hop
        the outbox is a drop directory that nobody here delivers from, so it
        never expires."""
        now = time.time() if now is None else now
        limit = self.cfg.limits["expire_after"]
        found = {}
        for box in self.store.boxes():
            if box == OUTBOX and not self.cfg.next_hop:
                continue
            old = [e for e in self.store.list(box) if now - e.received > limit]
            if old:
                found[box] = old
        return found

    def expire(self, envelopes):
        """Bounce and remove these envelopes (status 4.4.7)."""
        days = self.cfg.limits["expire_after"] / 86400
        why = f"it was still undelivered after {days:g} day(s) in the queue"
        diag = f"451 4.4.7 message expired in the queue of {self.cfg.hostname}"
        for scanned in envelopes:
            env = self.store.current(scanned)      # its recipients may have changed since the scan
            data = self.store.read(env) if env else None
            if data is None:
                continue        # delivered or dropped since the scan
            self.bounce(env, {r: ("4.4.7", diag) for r in env.rcpts}, why, data)
            self.store.remove(env)
            log.info("expired %s in %s", env.id, env.box)

    async def expire_once(self):
        """Scan, then expire box by box while holding the box like an ATRN
        session would, so a message is never delivered and bounced at once."""
        found = await asyncio.to_thread(self.expired)
        for box, envelopes in found.items():
            if box in self.busy:
                continue        # being drained: next scan
            self.busy.add(box)
            try:
                await asyncio.to_thread(self.expire, envelopes)
            finally:
                self.busy.discard(box)

    async def _expiry_loop(self):
        while True:
            await _survive(self.expire_once(), "expiry")
            await asyncio.sleep(self.cfg.limits["expire_check"])

    # -- running -----------------------------------------------------------------
    async def start(self):
        """Recover the queue and open every configured listener. Returns the servers."""
        self.store.lock()
        kept, removed = self.store.recover()
        log.info("queue %s: %d message(s) kept, %d leftover file(s) removed", self.cfg.queue, kept, removed)
        self.committer.start()
        ctx = self.cfg.tls_context()
        listen = self.cfg.listen
        servers = []
        for name in ("smtp", "submission", "odmr", "odmr_tls"):
            if name not in listen:
                continue
            host, port = listen[name]
            if name in ("smtp", "submission"):
                server = await smtp_in.serve(self, name, host, port, ctx)
            else:
                server = await odmr.serve(self, host, port, ctx, implicit_tls=name == "odmr_tls")
            servers.append(server)
            addr, bound = server.sockets[0].getsockname()[:2]
            addr = f"[{addr}]" if ":" in addr else addr
            tls = " (implicit TLS)" if name == "odmr_tls" else " (STARTTLS)" if ctx else ""
            print(f"relay: {name} listening on {addr}:{bound}{tls}", file=sys.stderr, flush=True)
        if "submission" in listen and not ctx:
            log.warning("submission without [tls]: passwords cross the network in the clear")
        return servers

    async def run(self):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        servers = await self.start()
        tasks = [asyncio.create_task(self._expiry_loop()), asyncio.create_task(self._outbox_loop())]
        self._outbox_kick.set()
        await stop.wait()
        log.info("stopping (%d ODMR session(s) ended; undelivered mail stays queued)", len(self.sessions))
        for s in servers:
            s.close()
        tasks += self.sessions
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.committer.stop()


async def _survive(coro, what):
    """Run one round of a background job; a bug in one round is logged and
    the next round runs, instead of the job dying silently."""
    try:
        await coro
    except Exception:
        log.exception("%s: unexpected error; trying again later", what)


def main(cfg):
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="relay: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.ERROR)     # aiosmtpd: chatty, and logs AUTH lines at debug
    # start() logs its own, clearer warning for submission without [tls].
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    asyncio.run(Relay(cfg).run())
    return 0
