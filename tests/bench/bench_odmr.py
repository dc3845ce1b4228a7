"""One ODMR poll on the simulated board (micropython, firmware as .mpy, a FAT
card image) draining the desktop relay: 1000 x 10 KB messages, then one
20 MB message (on a fresh card); wall time, and the heap each poll ran in.
MicroPython's GC keeps no high-water mark (micropython.mem_peak() on the
unix port counts every allocation ever made, not the peak in use), so the
heap figure is the -X heapsize each poll completed with, tried from the
smallest that runs the app (160k, see tests/e2e/test_odmr_pull.py) up; the
hand-off to the mailboxes (every 50 messages during the pull, and at the
end) is inside the poll's wall time.
Peers in the same run: the same 1000 messages drained by a CPython
customer into aiosmtpd that announces PIPELINING as the box does, twice:
one that writes each message to a file and fsyncs it before its 250, as the
box must (the target, the same rule as the other benches' peers), and one
that keeps them in memory. Rounds are interleaved (durable peer, memory
peer, box), ROUNDS times, each box poll on a fresh card (made before the
clock starts) at the sim's default heap; the report gives the median ratio
(peer time / box time) with min and max."""
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host_tools import mpy
from host_tools.relay.testing import Customer, RelayProcess, Sink, write_config
from tests.bench.bench_relay import COUNT, SIZE, ingest, messages
from tests.e2e.test_local import compile_firmware

HEAPS = ("160k", "192k", "256k")
ROUNDS = 3
BIG = 20 << 20


class DurableSink(Sink):
    """The customer that keeps what it takes: each message in a file of its
    own, fsynced before the 250."""

    def __init__(self, root):
        super().__init__(pipelining=True)
        self.root = root

    async def handle_DATA(self, server, session, envelope):
        import os

        with open(self.root / f"{len(self.messages)}.eml", "wb") as f:
            f.write(envelope.original_content)
            f.flush()
            os.fsync(f.fileno())
        return await super().handle_DATA(server, session, envelope)


def _drain_to(relay, sink):
    t0 = time.monotonic()
    c = Customer(relay.ports["odmr"], timeout=900)
    c.login()
    c.turn(sink, timeout=900)
    assert len(sink.messages) == COUNT, f"the peer got {len(sink.messages)} of {COUNT}"
    return time.monotonic() - t0


def _card(tmp, name):
    image = tmp / name
    subprocess.run([sys.executable, "-m", "host_tools", "sd", "mkfs", str(image), "--size", "160M"],
                   check=True, capture_output=True, cwd=mpy.REPO)
    return image


def _pull(report, what, mpy_dir, cfg, image, rate):
    """One poll, at the smallest heap first; a poll that runs out of heap
    loses nothing it answered with 250 (the next size picks up from there),
    and each attempt is reported with what it did."""
    for heap in HEAPS:
        t0 = time.monotonic()
        out = mpy.run(mpy.BOARD_UNIX / "main.py", "--config", cfg, "--sd", image, "--once", heap=heap,
                      extra_paths=[mpy_dir], capture_output=True, text=True, timeout=3600)
        wall = time.monotonic() - t0
        lines = out.stdout.splitlines()
        taken = [line.split(", ")[1] for line in lines if "delivery ended" in line]
        if out.returncode == 0:
            # After a failed attempt this run may only hand over what that one took.
            note = rate(wall) if "pulled" in lines[-1] else "start-up and hand-off of what the attempt above took"
            report(f"box: {what}, -X heapsize={heap}", f"{wall:.1f} s", f"{note}; {lines[-1]}")
            return
        why = [line for line in lines if "Error" in line][-1:] or lines[-1:]
        report(f"box: {what}, -X heapsize={heap}", f"{wall:.1f} s", f"{taken[0] if taken else 'nothing taken'}; then {why[0]}")


def run(report):
    import json

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mpy_dir = compile_firmware(tmp / "mpy")
        relay = RelayProcess(write_config(tmp / "relay.toml", tmp / "queue", limits={"max_size": BIG + (1 << 20)}))
        relay.start()
        try:
            msgs = list(messages())
            flash = tmp / "flash"
            flash.mkdir()
            cfg = flash / "gw.json"
            cfg.write_text(json.dumps({
                "hostname": "gw.example.test", "domains": ["example.test"],
                "relay": {"host": "127.0.0.1", "port": relay.ports["odmr"], "tls": "none", "user": "office", "secret": "s3cret"},
                "users": {"a": {"password": "pw", "addresses": ["a@example.test"]}},
                "smtp": {"max_size": BIG + (1 << 20)}}))
            heap = mpy.sim_heap()
            durable, memory, boxes = [], [], []
            for r in range(ROUNDS):
                ingest(relay.ports["smtp"], msgs)
                kept = tmp / f"peer{r}"
                kept.mkdir()
                durable.append(_drain_to(relay, DurableSink(kept)))
                ingest(relay.ports["smtp"], msgs)
                memory.append(_drain_to(relay, Sink(pipelining=True)))
                ingest(relay.ports["smtp"], msgs)
                card = _card(tmp, f"round{r}.img")  # a user's card is made once, not at each poll
                t0 = time.monotonic()
                out = mpy.run(mpy.BOARD_UNIX / "main.py", "--config", cfg, "--sd", card, "--once",
                              heap=heap, extra_paths=[mpy_dir], capture_output=True, text=True, timeout=3600)
                boxes.append(time.monotonic() - t0)
                last = out.stdout.splitlines()[-1:] or ["no output"]
                if out.returncode or f"pulled {COUNT} message" not in last[0]:
                    raise RuntimeError(f"the box's poll failed: {last[0]}")
            med = statistics.median
            for name, peers in (("file + fsync", durable), ("memory", memory)):
                report(f"peer: CPython customer -> aiosmtpd ({name})", f"{COUNT / med(peers):.0f} msg/s",
                       f"{COUNT} x {SIZE // 1024} KB; runs " + ", ".join(f"{p:.1f} s" for p in peers))
            report(f"box: one poll, {COUNT} x {SIZE // 1024} KB, -X heapsize={heap}", f"{COUNT / med(boxes):.0f} msg/s",
                   "runs " + ", ".join(f"{b:.1f} s" for b in boxes) + "; every poll pulled all of them")
            for name, peers, target in (("file + fsync", durable, "target >= 1.0x"), ("memory", memory, "keeps nothing")):
                ratios = sorted(p / b for p, b in zip(peers, boxes))
                report(f"ratio box / peer ({name})", f"{med(ratios):.2f}x",
                       f"min {ratios[0]:.2f}x, max {ratios[-1]:.2f}x over {ROUNDS} interleaved rounds; {target}")
            big = "From: x@outside.test\r\nTo: a@example.test\r\nSubject: big\r\n\r\n"
            line = "0123456789" * 7 + "\r\n"
            big += line * ((BIG - len(big)) // len(line))
            with __import__("smtplib").SMTP("127.0.0.1", relay.ports["smtp"], timeout=600) as s:
                s.sendmail("x@outside.test", ["a@example.test"], big)
            _pull(report, "one poll, 1 x 20 MB", mpy_dir, cfg, _card(tmp, "big.img"), lambda wall: f"{BIG / wall / 1e6:.1f} MB/s")
        finally:
            relay.stop()
