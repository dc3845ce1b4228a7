# The scheduler with an injected clock: nothing here sleeps for real.
import support
from gateway.scheduler import Scheduler

# Each test validates its config (gateway.config, loaded and dropped again):
# the default 64k left too little after it for a cycle's task.
MICROPYTHON_HEAP = "96k"


class Clock:
    def __init__(self, t):
        self.t = t

    def now(self):
        return self.t


class Stop(Exception):
    pass


class Cycle:
    """Records when it ran; results come from a list (default: ok)."""

    def __init__(self, clock, results=(), during=None):
        self.clock = clock
        self.results = list(results)
        self.times = []
        self.during = during

    async def run(self):
        from gateway.poll import Result

        self.times.append(self.clock.t)
        if self.during:
            self.during()
        ok, retry = self.results.pop(0) if self.results else (True, False)
        return Result(ok, retry, "test")


def _run(cfg, cycles, start=0, results=(), events=None, rand=lambda: 0.5, during=None):
    """Runs the scheduler until `cycles` cycles happened; events: {time: fn}
    called once the clock passes that time."""
    clock = Clock(start)
    cycle = Cycle(clock, results, during)
    events = dict(events or {})
    s = Scheduler(support.config(cfg), cycle, clock, rand=rand)

    async def sleep(seconds):
        assert seconds > 0
        # Wake at the next event if it comes first, as poke() would.
        nxt = min(events) if events else None
        if nxt is not None and nxt <= clock.t + seconds:
            clock.t = nxt
            events.pop(nxt)(s)
        else:
            clock.t += seconds
        if len(cycle.times) >= cycles:
            raise Stop()

    s._sleep = sleep
    try:
        support.run(s.run())
    except Stop:
        pass
    return cycle.times, s


def test_base_interval():
    times, s = _run({"poll": {"interval": 900}}, 3)
    assert times == [0, 900, 1800]
    assert s.last_poll == 1800 and s.next_poll == 2700 and s.last_result.ok


def test_a_window_has_its_own_interval_and_starts_on_time():
    cfg = {"poll": {"interval": 3600, "windows": [{"from": "08:00", "to": "09:00", "interval": 600}]}}
    times, _ = _run(cfg, 9, start=7 * 3600 + 50 * 60)
    h = [(t // 3600, t // 60 % 60) for t in times]
    assert h == [(7, 50), (8, 0), (8, 10), (8, 20), (8, 30), (8, 40), (8, 50), (9, 50), (10, 50)], h


def test_window_over_midnight_in_local_time():
    # 22:00-02:00 local at UTC+2 is 20:00-24:00 UTC.
    cfg = support.config({"poll": {"interval": 7200, "utc_offset": 120, "windows": [{"from": "22:00", "to": "02:00", "interval": 900}]}})
    s = Scheduler(cfg, None, Clock(0))
    assert s.interval_at(21 * 3600) == 900 and s.interval_at(19 * 3600) == 7200 and s.interval_at(86400 + 3600) == 7200
    assert s.regular_after(19 * 3600) == 20 * 3600


def test_new_outbound_mail_runs_a_cycle_after_the_debounce_and_a_burst_is_one_cycle():
    cfg = {"poll": {"interval": 900, "debounce": 30}}
    events = {100: Scheduler.poke, 110: Scheduler.poke, 125: Scheduler.poke}
    times, _ = _run(cfg, 3, events=events)
    assert times == [0, 130, 1030]


def test_poll_now_runs_at_once():
    times, _ = _run({"poll": {"interval": 900}}, 3, events={200: Scheduler.poll_now})
    assert times == [0, 200, 1100]


def test_failures_back_off_exponentially_with_jitter_up_to_the_cap():
    cfg = {"poll": {"interval": 900, "backoff_min": 60, "backoff_max": 600}}
    results = [(False, True)] * 6 + [(True, False)]
    times, s = _run(cfg, 8, results=results, rand=lambda: 0.999)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps[:6] == [59, 119, 239, 479, 599, 599], gaps
    assert gaps[6] == 900 and s.failures == 0
    times, _ = _run(cfg, 3, results=[(False, True)] * 3, rand=lambda: 0.0)
    assert [b - a for a, b in zip(times, times[1:])] == [30, 60]


def test_a_refusal_never_retries_sooner_than_the_interval():
    cfg = {"poll": {"interval": 900, "backoff_min": 60, "backoff_max": 7200}}
    times, _ = _run(cfg, 6, results=[(False, False)] * 6, rand=lambda: 0.999)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps == [900, 900, 900, 900, 959], gaps


def test_backoff_wins_over_new_mail():
    cfg = {"poll": {"interval": 900, "debounce": 10, "backoff_min": 300}}
    times, _ = _run(cfg, 2, results=[(False, True)], events={50: Scheduler.poke}, rand=lambda: 0.999)
    assert times == [0, 299]


def test_never_two_cycles_at_once_and_a_poll_during_a_cycle_runs_after_it():
    box = []

    def during():
        s = box[0]
        assert s.running
        s.poll_now()

    clock = Clock(0)
    cycle = Cycle(clock, during=during)
    s = Scheduler(support.config({"poll": {"interval": 900}}), cycle, clock)
    box.append(s)

    async def main():
        first = await s.run_cycle()
        # A second call while one runs returns at once and runs nothing.
        s.running = True
        assert await s.run_cycle() is None
        s.running = False
        return first

    assert support.run(main()).ok
    assert cycle.times == [0]
    assert s.due(0) == 0  # the poll asked for during the cycle is due now


def test_a_memory_error_in_a_nap_does_not_end_the_polling():
    # Issue 11: on a cut-up heap the first nap after a cycle failed to load
    # asyncio's wait_for (MemoryError), and the scheduler's task ended: the
    # box never polled again.
    clock = Clock(0)
    cycle = Cycle(clock)
    s = Scheduler(support.config({"poll": {"interval": 900}}), cycle, clock)
    calls = []

    async def sleep(seconds):
        calls.append(seconds)
        if len(calls) == 1:
            raise MemoryError("memory allocation failed, allocating 376 bytes")
        clock.t += seconds
        if len(cycle.times) >= 3:
            raise Stop()

    s._sleep = sleep
    with support.raises(Stop):
        support.run(s.run())
    assert cycle.times == [0, 900, 1800] and calls[:2] == [Scheduler.max_nap, 1], (cycle.times, calls[:4])
