"""Raw card throughput: writing through VfsFat on the simulated card versus
CPython writing the same bytes to a host file, in the same run."""
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host_tools import mpy

SIZE = 32 << 20
SCRIPT = """
import sys, time
from board import Board, make_image
img = sys.argv[1]
make_image(img, %d)
b = Board(img); root = b.mount_sd()
buf = bytearray(4096); mv = memoryview(buf)
t0 = time.ticks_ms()
with open(root + '/big', 'wb') as f:
    for _ in range(%d // 4096):
        f.write(mv)
print(time.ticks_diff(time.ticks_ms(), t0))
b.umount_sd()
"""


def run(report):
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "w.py"
        script.write_text(SCRIPT % (SIZE + (8 << 20), SIZE))
        out = mpy.run(script, Path(tmp) / "card.img", capture_output=True, text=True, check=True).stdout
        fat_ms = max(int(out.split()[-1]), 1)
        t0 = time.monotonic()
        with open(Path(tmp) / "host", "wb") as f:
            buf = bytes(4096)
            for _ in range(SIZE // 4096):
                f.write(buf)
            f.flush()
            os.fsync(f.fileno())
        host_ms = max((time.monotonic() - t0) * 1000, 1)
    fat = SIZE / fat_ms / 1000
    host = SIZE / host_ms / 1000
    report("VfsFat write on the simulated card", f"{fat:.0f} MB/s")
    report("host file write + fsync (CPython)", f"{host:.0f} MB/s")
    report("ratio card / host", f"{fat / host:.2f}x")
    run_stored(report)


# --- stored mail: the same box at 0 and at 10,000 messages ------------------
STORED = int(os.environ.get("BENCH_STORED", 10_000))  # in alice's mailbox, and as many waiting in the spool
MEASURED = 300  # LAN messages timed at each size, in each round
ROUNDS = 5
BUDGET_32 = "112k"  # the heap issue's budget, on the 32-bit build
DEFAULT_64 = "256k"  # the 64-bit sim's default heap
MICROPYTHON_32 = Path(__file__).resolve().parents[3] / "shared" / "micropython32" / "micropython"

MEASURE = r"""
import gc, sys, time
from board import Board, FileBlockDev

syncs = [0]  # block device syncs: FatFs f_sync, one per fsync, close or unlink
reads = [0]  # blocks read: the card work a message costs, whatever the host's load
real = FileBlockDev.ioctl
real_read = FileBlockDev.readblocks


def ioctl(self, op, arg):
    if op == 3:
        syncs[0] += 1
    return real(self, op, arg)


def readblocks(self, n, buf):
    reads[0] += len(buf) // 512
    return real_read(self, n, buf)


FileBlockDev.ioctl = ioctl
FileBlockDev.readblocks = readblocks
from gateway.spool import Spool
from gateway.policy import Policy
from gateway.mailbox import Mailboxes

image, n = sys.argv[1], int(sys.argv[2])
from gateway import config
from gateway.compat import drop_modules
cfg = config.validate({"users": {"alice": {"password": "x", "addresses": ["alice@example.test"]},
                                 "bob": {"password": "y", "addresses": ["bob@example.test"]}}})
config = None
drop_modules(("gateway.config",))
b = Board(image)
root = b.mount_sd()
gc.collect()
t0 = time.ticks_us()
spool = Spool(root + "/spool", b.now)
spool.start()
boxes = Mailboxes(root + "/mail", Policy(cfg), spool)
boot = time.ticks_diff(time.ticks_us(), t0)
t0 = time.ticks_us()
listing = boxes.listing("alice")
login = time.ticks_diff(time.ticks_us(), t0)
shown = len(listing)
body = b"y" * 78 + b"\r\n"
run = int(b.now())  # each run takes seconds: its own Message-IDs


live = [0]  # the most heap in use after a collection, sampled


def sample():
    gc.collect()
    live[0] = max(live[0], gc.mem_alloc())


def lan(i, rcpts):
    if i % 50 == 0:
        sample()
    d = spool.begin("pc@example.test", rcpts)
    # A new Message-ID each run: the rounds reuse a card, and a message of an
    # earlier round would be a provider re-send, dropped (an unlink, not a
    # delivery).
    d.write(b"Subject: lan %d\r\nMessage-ID: <lan%d.%d@example.test>\r\n\r\n" % (i, i, run))
    for _ in range(128):  # 10 KB
        d.write(body)
    d.commit()
    boxes.deliver_pending(spool)  # what the LAN listener does after each 250


s0, r0 = syncs[0], reads[0]
t0 = time.ticks_us()
for i in range(n):
    lan(i, [("alice@example.test", "local")])
direct = time.ticks_diff(time.ticks_us(), t0)
per = (syncs[0] - s0) / n
read = (reads[0] - r0) / n
t0 = time.ticks_us()
for i in range(n, 2 * n):
    lan(i, [("alice@example.test", "local"), ("bob@example.test", "local")])
shared = time.ticks_diff(time.ticks_us(), t0)
b.umount_sd()
print("FIG", boot, login, shown, n * 1e6 / direct, per, n * 1e6 / shared, live[0], read)
"""


def _prepared(tmp, stored):
    """A 512 MB card image with `stored` messages in alice's mailbox and as
    many waiting for the smarthost, made with the firmware's own code."""
    from tests.e2e.test_local_scale import PREPARE

    image = Path(tmp) / f"card{stored}.img"
    image.unlink(missing_ok=True)
    subprocess.run([str(Path(sys.executable).parent / "odmrgw"), "sd", "mkfs", image, "--size", "512M"], check=True,
                   capture_output=True)
    # At 0 too: both boots find their mailboxes already made.
    prep = Path(tmp) / "prepare.py"
    prep.write_text(PREPARE)
    subprocess.run([mpy.micropython_exe(), "-X", "heapsize=2m", str(prep), str(image), str(stored), str(stored)],
                   env=mpy.env(), check=True, capture_output=True, timeout=3600)
    return image


def _store_figures(tmp, exe, mpy_dir, heap, image):
    script = Path(tmp) / "measure.py"
    script.write_text(MEASURE)
    out = subprocess.run([exe, "-X", f"heapsize={heap}", str(script), str(image), str(MEASURED)], env=mpy.env([mpy_dir]),
                         capture_output=True, text=True, timeout=3600)
    line = [x for x in out.stdout.splitlines() if x.startswith("FIG ")]
    if not line:
        raise RuntimeError(out.stdout + out.stderr)
    return [float(x) for x in line[0].split()[1:]]


def _compiled(tmp, march):
    out = Path(tmp) / f"mpy-{march}"
    for src, rel in mpy.gateway_sources() + [(mpy.BOARD_UNIX / "board.py", Path("board.mpy"))]:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        mpy.cross_compile(src, dst, march=march).check_returncode()
    return out


def run_stored(report):
    """Rounds interleaved 0 / 10,000 (the host's fsync time swings with the
    machine's load), each on fresh copies of the prepared cards; each figure
    is the median of the rounds, and the rate's ratio is given both ways:
    the median of the rounds' ratios, and the ratio of the medians."""
    runs = [("64-bit", mpy.micropython_exe(), "host", DEFAULT_64)]
    if MICROPYTHON_32.exists():
        runs.append(("32-bit", str(MICROPYTHON_32), "x86", BUDGET_32))
    with tempfile.TemporaryDirectory() as tmp:
        images = {n: _prepared(tmp, n) for n in (0, STORED)}
        for label, exe, march, heap in runs:
            mpy_dir = _compiled(tmp, march)
            rounds = {0: [], STORED: []}
            for r in range(ROUNDS):
                # Each round on fresh copies, both made and on the disk before
                # either runs: at exactly 0 and 10,000, not at what the rounds
                # before sent, and no run pays the writing of a copy. Which
                # size goes first alternates.
                cards = {n: Path(tmp) / f"round{n}.img" for n in images}
                for n, card in cards.items():
                    subprocess.run(["cp", "--sparse=always", images[n], card], check=True)
                    with open(card, "rb+") as f:
                        os.fsync(f.fileno())
                for n in (0, STORED) if r % 2 == 0 else (STORED, 0):
                    rounds[n].append(_store_figures(tmp, exe, mpy_dir, heap, cards[n]))
                    cards[n].unlink()
            figs = {n: [statistics.median(r[k] for r in rounds[n]) for k in range(8)] for n in rounds}
            for n in (0, STORED):
                boot, login, shown, rate, syncs, shared, peak, read = figs[n]
                at = f"{n} stored + {n} waiting, {label} at {heap}"
                report(f"boot (spool + mailboxes), {at}", f"{boot / 1000:.1f} ms")
                report(f"POP3 login listing ({shown:.0f} shown), {at}", f"{login / 1000:.1f} ms")
                report(f"LAN 10 KB to one mailbox, {at}", f"{rate:.0f} msg/s",
                       f"{syncs:.2f} syncs and {read:.1f} blocks read a message")
                report(f"LAN 10 KB to two mailboxes (hand-off), {at}", f"{shared:.0f} msg/s")
                report(f"most heap in use (sampled after a collection), {at}", f"{peak / 1024:.0f} KB")
            ratios = sorted(rounds[STORED][i][3] / rounds[0][i][3] for i in range(ROUNDS))
            report(f"LAN rate at {STORED} / at 0, {label}", f"{statistics.median(ratios):.2f}x",
                   f"min {ratios[0]:.2f}, max {ratios[-1]:.2f} over {ROUNDS} interleaved rounds; "
                   f"the medians' ratio {figs[STORED][3] / figs[0][3]:.2f}x")
            # The card's work, which the host's load does not blur: the steady figure.
            report(f"blocks read a LAN message at {STORED} / at 0, {label}", f"{figs[STORED][7] / figs[0][7]:.2f}x")
