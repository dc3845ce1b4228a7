"""The SMTP receiver on micropython (firmware as .mpy, the simulated card)
against aiosmtpd on CPython, in the same run, with the same raw-socket client
on loopback:
- ingest of one 50 MB message (MB/s from the first data byte to the 250), in
  two shapes: an attachment as mail carries it (base64 in 76-character
  lines, RFC 2045), and text in long lines of 20-990 characters. aiosmtpd
  works line by line, so its rate grows with the line length; the receiver
  scans whole buffers, so its rate barely depends on it;
- small messages per second over one pipelined session (RFC 2920 groups:
  message, final dot, next MAIL/RCPT/DATA in one write);
- the heap for a 1 KB and for a 50 MB message: micropython.mem_peak() as the
  task asks, the live heap after each, and the smallest -X heapsize that
  receives each message.
aiosmtpd (tests/bench/peer_mailbox.py, a process of its own) writes every
message to its own file and fsyncs it; the receiver writes to the FAT image
through VfsFat and f_syncs before its 250. Rounds are interleaved receiver,
aiosmtpd, receiver, ...; each ratio is the median of the rounds' ratios,
with their min and max. This is the bare receiver (smtpd_sim: spool only, no
policy, no mailbox); the box as deployed is tests/bench/bench_box.py."""
import base64
import random
import statistics
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from host_tools import mpy
from tests.e2e.test_receiver_peers import compile_firmware, free_port, make_card, sim_command

BIG = 50 << 20
SMALL = 2000
HEAP = mpy.receiver_heap()
# Five: a 50 MB round takes a second or two a side, and on a shared 2-core
# machine single rounds swing by half (either side, either way).
ROUNDS = 5
# A receiver that runs out of heap mid-session may never answer; the bench
# must not wait for it forever.
READ_TIMEOUT = 60


def stuffed_message(size, seed=1):
    """(wire bytes incl. the final dot, un-stuffed size) of a text message."""
    rnd = random.Random(seed)
    line = b"The quick brown fox jumps over the lazy dog 0123456789 " * 18
    lines = []
    total = 0
    while total < size:
        n = rnd.randrange(20, 990)
        text = line[:n]
        if rnd.random() < 0.01:
            text = b"." + text
        lines.append(text)
        total += len(text) + 2
    body = b"\r\n".join(lines) + b"\r\n"
    return body.replace(b"\r\n.", b"\r\n..") if body[:1] != b"." else b"." + body.replace(b"\r\n.", b"\r\n.."), total


def attachment_message(size, seed=1):
    """(wire bytes, size) of a message that is one base64 attachment: what a
    large message looks like on the wire. Base64 lines never start with a
    dot, so nothing is stuffed."""
    rnd = random.Random(seed)
    head = (b"From: <a@far.test>\r\nTo: <b@example.test>\r\nSubject: scan\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n")
    raw = rnd.randbytes((size - len(head)) * 57 // 78)
    body = head + base64.encodebytes(raw).replace(b"\n", b"\r\n")
    return body, len(body)


def _replies(sock, count):
    data = b""
    got = 0
    last = b""
    while got < count:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise OSError("closed after %d replies: %r" % (got, data[-200:]))
        data += chunk
        *lines, data = data.split(b"\r\n")
        for line in lines:
            if line[3:4] == b" ":
                got += 1
                last = line
    return last


def ingest(port, wire_body):
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as s:
        _replies(s, 1)
        s.sendall(b"EHLO bench\r\nMAIL FROM:<a@far.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        _replies(s, 4)
        payload = wire_body + b".\r\n"  # copied before the clock starts: it is the client's cost
        t0 = time.perf_counter()
        s.sendall(payload)
        last = _replies(s, 1)
        dt = time.perf_counter() - t0
        assert last.startswith(b"250"), last
        s.sendall(b"QUIT\r\n")
    return dt


def pipelined(port, count, body):
    group = b"MAIL FROM:<a@far.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as s:
        _replies(s, 1)
        t0 = time.perf_counter()
        s.sendall(b"EHLO bench\r\n" + group)
        _replies(s, 4)
        for i in range(count):
            last_one = i == count - 1
            s.sendall(body + b".\r\n" + (b"QUIT\r\n" if last_one else group))
            last = _replies(s, 2 if last_one else 4)
        dt = time.perf_counter() - t0
        assert last.startswith(b"221"), last
    return count / dt


class Sim:
    def __init__(self, mpy_dir, image, heap=HEAP):
        self.port = free_port()
        self.proc = subprocess.Popen(sim_command(mpy_dir, "serve", image, self.port, 1 << 30, heap=heap), env=mpy.env([mpy_dir]),
                                     cwd=mpy_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines = []
        threading.Thread(target=lambda: [self.lines.append(line.strip()) for line in self.proc.stdout], daemon=True).start()
        end = time.monotonic() + 20
        while not any(line.startswith("READY") for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("smtpd_sim did not start:\n" + "\n".join(self.lines))
            time.sleep(0.02)

    def queued(self):
        end = time.monotonic() + 5
        while time.monotonic() < end:
            hits = [line for line in self.lines if line.startswith("QUEUED")]
            if hits:
                return dict(kv.split("=") for kv in hits[-1].split()[2:])
            time.sleep(0.02)
        return {}

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def _smallest_heap(mpy_dir, tmp, wire_body, lo=56, hi=128):
    """The smallest -X heapsize (in KB, 4 KB steps) at which the receiver
    starts and takes this message."""
    while lo < hi:
        mid = (lo + hi) // 8 * 4
        ok = True
        try:
            sim = Sim(mpy_dir, make_card(tmp / f"h{mid}.img", "128M"), heap=f"{mid}k")
            try:
                ingest(sim.port, wire_body)
            finally:
                sim.stop()
        except (OSError, RuntimeError, AssertionError):
            ok = False
        (tmp / f"h{mid}.img").unlink(missing_ok=True)
        if ok:
            hi = mid
        else:
            lo = mid + 4
    return lo


def _ratio(report, name, mine, theirs, unit, target):
    ratios = [a / b for a, b in zip(mine, theirs)]
    report(f"{name}, receiver (micropython, -X heapsize={HEAP})", f"{statistics.median(mine):.1f} {unit}",
           "runs " + ", ".join(f"{x:.1f}" for x in mine))
    report(f"{name}, aiosmtpd (CPython, file + fsync, own process)", f"{statistics.median(theirs):.1f} {unit}",
           "runs " + ", ".join(f"{x:.1f}" for x in theirs))
    report(f"{name}, ratio receiver / aiosmtpd", f"{statistics.median(ratios):.2f}x",
           f"min {min(ratios):.2f}x, max {max(ratios):.2f}x over {len(ratios)} interleaved rounds; target {target}")


def _on_receiver(mpy_dir, tmp, card, measure):
    sim = Sim(mpy_dir, make_card(tmp / "card.img", card))
    try:
        return measure(sim.port), sim.queued()
    finally:
        sim.stop()
        (tmp / "card.img").unlink()


def _on_peer(tmp, measure):
    from tests.bench.bench_box import Peer

    peer = Peer(tmp)
    try:
        return measure(peer.port)
    finally:
        peer.stop()
        shutil.rmtree(peer.dir, ignore_errors=True)


def run(report):
    tmp = Path(tempfile.mkdtemp(prefix="bench_receiver"))
    try:
        mpy_dir = compile_firmware(tmp / "mpy")
        shapes = (("attachment", attachment_message(BIG)), ("long text lines", stuffed_message(BIG)))
        small, small_size = stuffed_message(1000, seed=2)
        loads = [(f"50 MB ingest, {name}", "MB/s", "128M", lambda port, b=body, n=size: n / ingest(port, b) / 1e6, ">= 2x")
                 for name, (body, size) in shapes]
        loads.append((f"{SMALL} x 1 KB pipelined", "msg/s", "128M", lambda port: pipelined(port, SMALL, small), ">= 1x"))
        mp_big = {}
        for name, unit, card, measure, target in loads:
            mine, theirs = [], []
            for _ in range(ROUNDS):
                rate, queued = _on_receiver(mpy_dir, tmp, card, measure)
                mine.append(rate)
                mp_big = queued if unit == "MB/s" else mp_big
                theirs.append(_on_peer(tmp, measure))
            _ratio(report, name, mine, theirs, unit, target)
        _, mp_small = _on_receiver(mpy_dir, tmp, "32M", lambda port: ingest(port, small))

        report("live heap after a 1 KB message", f"{mp_small.get('heap')} bytes")
        report("live heap after a 50 MB message", f"{mp_big.get('heap')} bytes")
        report("mem_peak() after a 1 KB message", f"{mp_small.get('peak')} bytes")
        report("mem_peak() after a 50 MB message", f"{mp_big.get('peak')} bytes",
               "this build's mem_peak counts every allocation since start: GC never lowers it")
        heap_small = _smallest_heap(mpy_dir, tmp, small)
        heap_big = _smallest_heap(mpy_dir, tmp, shapes[1][1][0], lo=heap_small - 4 if heap_small > 60 else 56)
        report("smallest heapsize that takes a 1 KB message", f"{heap_small}k")
        report("smallest heapsize that takes a 50 MB message", f"{heap_big}k", "equal = memory does not grow with size")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run(lambda name, value, note="": print(f"  {name:<56} {value}{'  (' + note + ')' if note else ''}"))
