# Wiring of the running gateway: board -> spool recovery -> mailboxes ->
# POP3 and LAN SMTP listeners -> scheduler (poll cycles) -> console.
# The board object is the only way in to the hardware: firmware never imports
# board code. The parts are imported when start() needs them, so a box that
# only shows its status never loads the SMTP engine.
from gateway import log
from gateway.compat import drop_modules, mem_alloc, mem_free

VERSION = "0.1.0"


class App:
    LOG_FILE = "log.txt"  # on the card, beside spool/ and mail/
    WATCHDOG_PERIOD = 2  # seconds between feeds; the board's WDT allows more
    QUEUE_LINES = 50  # the most `queue` lists
    QUEUE_RCPTS = 3  # recipients a `queue` line names; the rest are counted
    SMTP_BUFFERS = 2  # made at start, before the heap fragments: the provider's delivery and one office PC

    def __init__(self, board, cfg, cfg_path):
        self.board = board
        self.cfg = cfg
        self.cfg_path = cfg_path
        self.unsaved = False
        self.spool = self.policy = self.mailboxes = self.scheduler = self.forwarder = None
        self.servers = []
        self.ring = None

    # --- start-up -------------------------------------------------------
    def attach_log(self):
        """Copies every log line into a size-capped file on the card."""
        from gateway.logring import LogRing

        self.ring = LogRing(self.board.sd_root + "/" + self.LOG_FILE)
        log.attach(self.ring.write, self.board.now, self.ring.flush)

    def open_card(self):
        """Spool and mailboxes, at a cost that does not grow with the mail
        held: no message is read here (records are judged when first
        listed). What waits in the spool is handed on once the listeners
        are up (hand_off)."""
        # The config is checked and loaded: its code comes back only for a
        # console command, and the rest of the box gets its 7 KB.
        drop_modules(("gateway.config", "gateway.configcheck"))
        from gateway.spool import Spool
        from gateway.policy import Policy
        from gateway.mailbox import Mailboxes
        from gateway.odmr import session_buffer

        # The turned ODMR line's 4 KB buffer is made first, while the heap is
        # still in one piece; recovery and the listeners cut it up.
        self.session_buf = session_buffer()
        root = self.board.sd_root
        self.spool = Spool(root + "/spool", self.board.now)  # unix seconds on every board
        self.spool.start()
        self.policy = Policy(self.cfg)
        self.mailboxes = Mailboxes(root + "/mail", self.policy, self.spool)
        self.mailboxes.on_forward = self._forward

    async def hand_off(self):
        """Older firmware's mailboxes move into today's layout, a step at a
        time between the sessions (thousands of copies must not hold up
        POP3 or the watchdog), and mail that waited in the spool at boot
        goes on to the mailboxes. A failure is logged: the mail stays where
        it was for the next boot or cycle."""
        import asyncio

        try:
            while self.mailboxes.migrate():
                await asyncio.sleep(0)
            log.info("spool: %d handed to the mailboxes" % self.mailboxes.deliver_pending(self.spool))
        except Exception as e:  # noqa: BLE001 - the box serves on whatever the card holds
            log.error("spool: hand-off failed: %r" % (e,))

    def cycle(self):
        from gateway.poll import PollCycle

        return PollCycle(self.cfg, self.spool, self.policy, self.mailboxes, self.board, self.session_buf)

    async def start(self):
        """Everything but the console: card, listeners, scheduler."""
        import asyncio
        from gateway.smtp import server

        # A recipient table more than buffers: the provider's delivery on the
        # turned line has its buffer from the poll (session_buf).
        server.reserve(self.SMTP_BUFFERS, tables=self.SMTP_BUFFERS + 1)
        self.open_card()
        host = self.cfg["listen"]
        from gateway import pop3

        pcfg = self.cfg["pop3"]
        self.servers.append(await pop3.serve(self.cfg, self.mailboxes, host, pcfg["port"], pcfg["sessions"]))
        from gateway import lan

        self.servers.append(
            await lan.serve(self.cfg, self.spool, self.policy, host, self.cfg["smtp"]["port"], self._delivered, self._outbound,
                            self.cfg["smtp"]["sessions"])
        )
        log.info("listening on %s: smtp %d, pop3 %d" % (host, self.cfg["smtp"]["port"], self.cfg["pop3"]["port"]))
        if self.cfg["imap"]["port"]:  # off by default: its code is loaded only here (docs/imap.md)
            from gateway.imap import listener

            self.servers.append(await listener.serve(self.cfg, self.mailboxes, host))
        from gateway.scheduler import Scheduler

        self.scheduler = Scheduler(self.cfg, self.cycle(), self.board)
        asyncio.create_task(self.hand_off())
        asyncio.create_task(self.scheduler.run())

    async def run(self, console=True, echo=True):
        """Runs the gateway until the console hands over to the REPL
        (KeyboardInterrupt) or the board reboots. A part that fails to start
        is logged and the rest (console, status) still runs, so the box stays
        reachable for repair."""
        import asyncio

        asyncio.create_task(self._watchdog())
        if self.board.card_problem:
            log.error("gateway not started: %s" % self.board.card_problem)
        else:
            try:
                await self.start()
            except Exception as e:  # noqa: BLE001 - keep the console up whatever broke
                log.error("gateway not started: %r" % (e,))
        if console:
            from gateway.console import Console

            await Console(self).run(echo=echo)
        while True:  # no console (EOF on stdin, or none wanted): serve on
            await asyncio.sleep(3600)

    async def _watchdog(self):
        import asyncio

        while True:
            self.board.feed_watchdog()
            self.flush()
            await asyncio.sleep(self.WATCHDOG_PERIOD)

    def _delivered(self, *args):
        # mail from the LAN for our own users goes to their mailboxes at once
        self.mailboxes.deliver_pending(self.spool)

    def _forward(self, spool):
        # Mail for an internal host (cfg["forward"]): its code is loaded
        # at the first such message.
        if self.forwarder is None:
            from gateway.forward import Forwarder

            self.forwarder = Forwarder(self.cfg, self.policy, self.mailboxes)
        self.forwarder.kick(spool)

    def _outbound(self, *args):
        if self.scheduler:
            self.scheduler.poke()

    def flush(self):
        """What waits in RAM for the card, written every watchdog period: log
        lines and duplicate-index records (lost to a power cut, they cost at
        most a few seconds of log and a duplicate, never a message)."""
        if self.ring:
            self.ring.flush()
        if self.mailboxes:
            self.mailboxes.flush()

    def close(self):
        for server in self.servers:
            server.close()
        self.servers = []
        self.flush()
        if self.ring:
            log.attach(None)
            self.ring.close()

    def stop(self):
        """close() once asyncio.run has ended (the console handed over to the
        REPL). A cancelled listener closes its socket only when its task runs
        again: without one more turn of the loop a stopped gateway would
        still accept connections and never greet."""
        import asyncio

        self.close()
        asyncio.run(_one_turn())

    # --- what the console asks ------------------------------------------
    def status(self):
        """The figures a person at the console asks for, as (label, value) pairs."""
        import gc

        gc.collect()
        board = self.board
        now = board.now()
        rows = [
            ("firmware", "odmrgw %s on board %s" % (VERSION, board.name)),
            ("uptime", _ago(now - board.started)),
            ("network", board.network_status()),
            ("listening", "smtp %s:%d, pop3 %s:%d" % (self.cfg["listen"], self.cfg["smtp"]["port"], self.cfg["listen"],
                                                      self.cfg["pop3"]["port"]) if self.servers else "no (gateway not started)"),
        ]
        sched = self.scheduler
        if sched:
            last = sched.last_result
            rows.append(("last poll", "%s ago: %s" % (_ago(now - sched.last_poll), last.summary) if sched.last_poll and last else "none yet"))
            rows.append(("next poll", "running now" if sched.running else ("in " + _ago(sched.next_poll - now) if sched.next_poll else "not planned")))
        else:
            rows.append(("poll", "not running"))
        if self.spool:
            c = self.spool.counts()
            rows.append(("queue", "%d for local delivery, %d outgoing" % (c.get("local", 0), c.get("out", 0))))
        if self.mailboxes:
            boxes = self.mailboxes.counts()
            rows.append(("mailboxes", ", ".join("%s %d (%d KiB)" % (u, n, b // 1024) for u, (n, b) in sorted(boxes.items())) or "none"))
        if board.card_problem:
            rows.append(("card", board.card_problem))
        else:
            free = board.card_free()
            full = self.spool and free < self.spool.min_free
            rows.append(("card", "%s: %d of %d KiB free%s" % (board.sd_root, free // 1024, board.card_size() // 1024,
                                                             " - FULL: new mail is refused until mail is deleted" if full else "")))
        if mem_free() is not None:
            rows.append(("heap", "%d bytes free, %d used" % (mem_free(), mem_alloc())))
        rows.append(("config", self.cfg_path + (" (unsaved changes)" if self.unsaved else "")))
        return rows

    def poll_now(self):
        if not self.scheduler:
            raise ValueError("the poll scheduler is not running (see `log`)")
        self.scheduler.poll_now()

    def queue_lines(self):
        lines = []
        if not self.spool:
            return lines
        for queue in ("out", "local"):
            for id in self.spool.ids(queue, "", self.QUEUE_LINES + 1):
                if len(lines) >= self.QUEUE_LINES:
                    return lines + ["..."]
                env = self.spool.envelope(id)
                shown, more = [], 0
                with env.recipients(queue) as rcpts:
                    for _, a, _ in rcpts:
                        if len(shown) < self.QUEUE_RCPTS:
                            shown.append(a)
                        else:
                            more += 1
                to = " ".join(shown) + (" (+%d more)" % more if more else "")
                lines.append("%-5s %s %7d B from <%s> to %s" % (queue, id, env.size, env.mail_from, to))
        return lines

    def log_tail(self, n):
        return self.ring.tail(n) if self.ring else ["no log file (card not mounted)"]

    # --- config and power -----------------------------------------------
    def set_config(self, cfg):
        """Takes a validated config. The dict is updated in place, so every
        part holding it sees the change (a new poll interval, a new user)."""
        self.cfg.clear()
        self.cfg.update(cfg)
        self.unsaved = True

    def save_config(self):
        from gateway import config

        config.save(self.cfg_path, self.cfg)
        self.unsaved = False

    def factory_reset(self):
        import os

        from gateway import config

        try:
            os.remove(self.cfg_path)
        except OSError:
            pass
        self.set_config(config.validate({}))
        self.unsaved = False
        log.warn("factory reset: config erased")

    def reboot(self):
        log.warn("reboot requested at the console")
        self.close()
        self.board.reboot()


async def _one_turn():
    import asyncio

    await asyncio.sleep(0)


def _ago(seconds):
    seconds = int(seconds)
    if seconds < 120:
        return "%ds" % seconds
    if seconds < 7200:
        return "%dm" % (seconds // 60)
    return "%dh%02dm" % (seconds // 3600, seconds // 60 % 60)

