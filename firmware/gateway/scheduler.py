# When poll cycles run: every poll.interval seconds, or a window's own
# interval during its time of day; soon after new outgoing mail (after
# poll.debounce seconds, so a burst goes out in one cycle); at once on the
# console's `poll`; and after a failure, with exponential backoff and
# jitter up to poll.backoff_max. One cycle at a time, always.
import asyncio
import random

from gateway import log

_DAY = 86400


def _minutes(text):
    h, _, m = text.partition(":")
    return int(h) * 60 + int(m or 0)


class Window:
    """A time of day with its own interval: {"from": "07:00", "to": "19:00",
    "interval": 300}; "to" before "from" runs over midnight."""

    def __init__(self, spec):
        self.start = _minutes(spec["from"]) * 60
        self.end = _minutes(spec["to"]) * 60
        self.interval = spec["interval"]

    def covers(self, sec):
        if self.start <= self.end:
            return self.start <= sec < self.end
        return sec >= self.start or sec < self.end


class Scheduler:
    max_nap = 60  # s; look at the clock at least this often

    def __init__(self, cfg, cycle, board, sleep=None, rand=None):
        poll = cfg["poll"]  # validated: gateway.config holds the defaults
        self.interval = poll["interval"]
        self.windows = [Window(w) for w in poll["windows"]]
        self.debounce = poll["debounce"]
        self.backoff_min = poll["backoff_min"]
        self.backoff_max = poll["backoff_max"]
        self.offset = poll["utc_offset"] * 60  # windows are local time
        self.cycle = cycle
        self.board = board
        self._sleep = sleep
        self._rand = rand or random.random
        self._wake = None
        self.last_poll = self.next_poll = self.last_result = None
        self.running = False
        self.failures = 0
        self._retry_at = None
        self._poke_at = None
        self._now = False

    # --- what the rest of the box calls ---------------------------------------
    def poke(self):
        """New outgoing mail: a cycle in `debounce` seconds (not later)."""
        if self._poke_at is None:
            self._poke_at = self.board.now()
        self._kick()

    def poll_now(self):
        self._now = True
        self._kick()

    def _kick(self):
        if self._wake:
            self._wake.set()

    # --- when ----------------------------------------------------------------
    def interval_at(self, t):
        sec = (t + self.offset) % _DAY
        for w in self.windows:
            if w.covers(sec):
                return w.interval
        return self.interval

    def regular_after(self, last):
        """The first time t after `last` with t - last >= interval_at(t)."""
        best = last + self.interval
        candidates = [last + w.interval for w in self.windows]
        day = (last + self.offset) // _DAY * _DAY - self.offset
        while day <= best:
            for w in self.windows:
                candidates.append(day + w.start)
                candidates.append(day + w.end)
            day += _DAY
        for t in candidates:
            if last < t < best and t - last >= self.interval_at(t):
                best = t
        return best

    def due(self, now):
        if self._now or self.last_poll is None:
            return now
        if self.failures:
            return self._retry_at  # backoff wins over new mail, no retry storm
        t = self.regular_after(self.last_poll)
        if self._poke_at is not None:
            t = min(t, self._poke_at + self.debounce)
        return t

    # --- the loop ------------------------------------------------------------
    async def run(self):
        if self._sleep is None:
            # asyncio loads its wait_for on first use: that import in the
            # first nap after a cycle found no room on a cut-up heap.
            asyncio.wait_for  # noqa: B018
            self._wake = asyncio.Event()
        while True:
            try:
                await self._step()
            except MemoryError as e:
                # A heap with no room for a moment must not end the polling
                # for good: this is the only task that polls. So short that
                # not even the line fits, it goes unsaid.
                try:
                    log.error("poll: the scheduler was short of memory: %r" % (e,))
                except MemoryError:
                    pass
                await (self._sleep or asyncio.sleep)(1)

    async def _step(self):
        now = self.board.now()
        self.next_poll = self.due(now)
        if self.next_poll <= now:
            await self.run_cycle()
        else:
            await self._nap(min(self.next_poll - now, self.max_nap))

    async def _nap(self, seconds):
        if self._sleep:
            await self._sleep(seconds)
            return
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    async def run_cycle(self):
        if self.running:
            return None
        self.running = True
        self._now = False
        self._poke_at = None
        start = self.board.now()
        try:
            result = await self.cycle.run()
        finally:
            self.running = False
        self.last_poll = start
        self.last_result = result
        if result.ok:
            self.failures = 0
            self._retry_at = None
        else:
            self.failures += 1
            delay = min(self.backoff_min << min(self.failures - 1, 20), self.backoff_max)
            # "Equal jitter": boxes that failed together do not retry together.
            delay = delay // 2 + int(self._rand() * (delay - delay // 2))
            if not result.retry:
                # A refusal (bad login, no ATRN, ...) will not mend itself in
                # seconds: never sooner than the regular interval.
                delay = max(delay, self.interval_at(start))
            self._retry_at = self.board.now() + delay
            log.warn("poll: failure %d, next try in %ds" % (self.failures, delay))
        return result
