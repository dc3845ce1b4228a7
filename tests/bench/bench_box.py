"""The box as deployed against its peer, with Postfix's smtp-source as the
load on both:
- the box: `odmrgw sim` (the firmware as deployed on a WROOM: its code in
  the romfs image, on the micropython binary that $ODMRGW_MICROPYTHON
  names, at the budget heap of docs/heap.md), with the
  LAN listener's full policy and the hand-off into a local user's mailbox on
  a FAT card image; each run on a fresh card;
- the peer: aiosmtpd in a process of its own (tests/bench/peer_mailbox.py),
  writing and fsyncing each message to a file per recipient.
Rounds are interleaved box, peer, box, peer, ...; each round's ratio is
box rate / peer rate, and the report gives their median, min and max.
After every run the stored mail is checked: every message smtp-source had
accepted is in the recipient's mailbox exactly once (smtp-source's
Message-Id, <pid.fd.count>, is unique per message with -d), and nowhere else.
The box's card syncs (FatFs f_sync, unlink, mkdir: each one a sync_fs and
the block device's sync, counted in board/unix/board.py) per accepted
message come from the same runs. The sim's card is an image file, and each
sync is an fsync of it (the unix port syncs a file it flushes), so box and
peer both pay the host's disk for each sync.
The Postfix daemon is never started; if installing the package started it,
it is stopped first."""
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from host_tools import mpy, sim

ROUNDS = 3
SENDER = "pc@lan.example.test"
USERS = ("alice", "bob")
# (name, message payload in bytes, count, parallel sessions)
LOADS = (
    ("10 KB x 2000, 4 sessions", 10 * 1024, 2000, 4),
    ("1 MB x 50, 1 session", 1 << 20, 50, 1),
)
CARD = "192M"
LOAD_TIMEOUT = 900  # s for one smtp-source run; a stuck receiver must not hang the bench
START_TIMEOUT = 60
EXPORT_HEAP = "8M"


def _smtp_source():
    found = shutil.which("smtp-source") or shutil.which("smtp-source", path="/usr/sbin:/usr/bin")
    if not found:
        raise SystemExit("bench: smtp-source is missing (Debian package postfix; `make debs` installs it)")
    return found


def stop_postfix_daemon():
    """The package's install may have started the daemon; the bench needs
    only its smtp-source, and nothing else listening."""
    status = subprocess.run(["postfix", "status"], capture_output=True, text=True)
    if status.returncode == 0:
        subprocess.run(["postfix", "stop"], capture_output=True)


def smtp_source(port, to, payload, count, sessions):
    """(seconds, messages accepted, its output) of one smtp-source run."""
    cmd = [_smtp_source(), "-c", "-d", "-s", str(sessions), "-m", str(count), "-l", str(payload),
           "-M", "lan.example.test", "-f", SENDER, "-t", to, f"127.0.0.1:{port}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LOAD_TIMEOUT)
    dt = time.perf_counter() - t0
    # -c prints a running count of completed transactions; a refusal ends the run.
    counts = [int(x) for x in proc.stdout.split() if x.isdigit()]
    accepted = count if proc.returncode == 0 else (counts[-1] if counts else 0)
    return dt, accepted, (proc.stderr or proc.stdout).strip().splitlines()[-1:] if proc.returncode else []


def _headers(path):
    """(To:, Message-Id:, body length with LF line ends) of a stored file."""
    data = path.read_bytes().replace(b"\r\n", b"\n")
    head, _, body = data.partition(b"\n\n")
    fields = {}
    for line in head.split(b"\n"):
        name, _, value = line.partition(b":")
        fields.setdefault(name.strip().lower(), value.strip())
    return fields.get(b"to", b"").decode(), fields.get(b"message-id", b"").decode(), len(body)


def check_mailboxes(root, user, accepted):
    """Problems (a list of sentences) with the mailboxes under root: every
    accepted message in `user`'s exactly once, no other mail anywhere."""
    problems = []
    seen = {}
    sizes = set()
    for box in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        files = [f for f in box.rglob("*") if f.is_file()]
        if box.name != user:
            if files:
                problems.append(f"{len(files)} messages in {box.name}'s mailbox, which was sent none")
            continue
        for f in files:
            to, mid, size = _headers(f)
            if to != f"<{user}@example.test>":
                problems.append(f"{f.name} has To: {to}")
            seen[mid] = seen.get(mid, 0) + 1
            sizes.add(size)
    twice = sum(1 for n in seen.values() if n > 1)
    if twice:
        problems.append(f"{twice} messages stored more than once")
    if len(seen) != accepted:
        problems.append(f"{len(seen)} distinct messages in {user}'s mailbox, {accepted} accepted")
    if len(sizes) > 1:
        problems.append(f"bodies of {len(sizes)} different lengths: {sorted(sizes)[:4]}")
    return problems


def fresh_card(tmp, prefix):
    """(a new directory under tmp, a blank card image in it)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp))
    image = folder / "card.img"
    subprocess.run([sys.executable, "-m", "host_tools", "sd", "mkfs", str(image), "--size", CARD],
                   check=True, capture_output=True, cwd=mpy.REPO)
    return folder, image


class Box:
    """`odmrgw sim` on a fresh card with the bench's users; the LAN listener
    on a free loopback port."""

    def __init__(self, tmp):
        self.dir, self.image = fresh_card(tmp, "box")
        self.port = mpy.free_port()
        self.config = self.dir / "flash" / "gateway.json"
        self.config.parent.mkdir()
        self.config.write_text(json.dumps({
            "hostname": "gw.example.test",
            "domains": ["example.test"],
            "users": {u: {"password": f"{u}-pw", "addresses": [f"{u}@example.test"]} for u in USERS},
            # One address gets half the listener's sessions (gateway.slots), and
            # smtp-source's sessions all come from 127.0.0.1: 8 admits its 4.
            "smtp": {"port": self.port, "allow": ["127.0.0.0/8"], "max_size": 10 << 20, "sessions": 8},
            "pop3": {"port": mpy.free_port()},
        }))
        self.lines = []
        self.proc = sim.popen(self.config, self.image, heap=mpy.budget_heap(), echo=False, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1)
        threading.Thread(target=lambda: [self.lines.append(x.rstrip("\n")) for x in self.proc.stdout], daemon=True).start()
        end = time.monotonic() + START_TIMEOUT
        while not any("listening on" in x for x in self.lines):
            if self.proc.poll() is not None or time.monotonic() > end or any("not started" in x for x in self.lines):
                self.stop()
                raise RuntimeError("odmrgw sim did not start:\n" + "\n".join(self.lines[-20:]))
            time.sleep(0.05)

    def stop(self):
        """Stops the sim as Ctrl-C would; returns its card syncs (or None)."""
        sim.stop(self.proc)
        end = time.monotonic() + 5
        while time.monotonic() < end and not any(x.startswith("card:") for x in self.lines):
            time.sleep(0.05)
        card = [x for x in self.lines if x.startswith("card:")]
        return int(card[-1].split()[-2]) if card else None

    def mailboxes(self):
        """The card's mailboxes as Maildirs (sdtool export). Its heap is the
        host's to give: `odmrgw sd export` at its own 256k cannot list a
        mailbox of 2000 messages (MemoryError in Mailboxes.ids)."""
        from host_tools import sd

        out = self.dir / "export"
        mpy.run(sd.SDTOOL, "export", self.image, out, heap=EXPORT_HEAP, check=True, capture_output=True)
        return out

    def errors(self):
        return [x for x in self.lines if x.startswith(("E ", "W ", "Traceback"))]


class Bare:
    """The bare receiver (board/unix/smtpd_sim.py): any recipient into the
    spool, no policy, no mailbox, at the budget heap (it fits): what the
    SMTP engine and the spool cost without the rest of the box."""

    def __init__(self, tmp):
        self.dir, self.image = fresh_card(tmp, "bare")
        self.port = mpy.free_port()
        self.proc = subprocess.Popen(
            [mpy.micropython_exe(), "-X", f"heapsize={mpy.budget_heap()}", "-m", "smtpd_sim", "serve", str(self.image), str(self.port),
             str(10 << 20)], env=mpy.env(), cwd=mpy.compiled(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.proc.kill()
            raise RuntimeError("smtpd_sim did not start: " + line + self.proc.stdout.read()[-500:])
        # Its QUEUED lines must not fill the pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def stop(self):
        self.proc.kill()
        self.proc.wait()

    def queued(self):
        """How many messages the spool holds, each once (smtpd_sim check)."""
        out = subprocess.run([mpy.micropython_exe(), "-X", "heapsize=256k", "-m", "smtpd_sim", "check", str(self.image)],
                             env=mpy.env(), cwd=mpy.compiled(), capture_output=True, text=True, timeout=600)
        return sum(1 for x in out.stdout.splitlines() if x.startswith("MSG "))


class Peer:
    """An aiosmtpd peer as a process of its own (MODULE, which prints READY)."""

    MODULE = "tests.bench.peer_mailbox"

    def __init__(self, tmp):
        self.dir = Path(tempfile.mkdtemp(prefix="peer", dir=tmp))
        self.port = mpy.free_port()
        self.start(str(self.dir), str(self.port))

    def start(self, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", self.MODULE, *args],
                                     cwd=mpy.REPO, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "READY":
            self.proc.kill()
            raise RuntimeError("the aiosmtpd peer did not start")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def mailboxes(self):
        return self.dir


def one_run(kind, tmp, payload, count, sessions):
    """{rate, accepted, problems, syncs} of one run on a fresh receiver."""
    rcv = {"box": Box, "bare": Bare, "peer": Peer}[kind](tmp)
    syncs = None
    try:
        dt, accepted, failure = smtp_source(rcv.port, f"{USERS[0]}@example.test", payload, count, sessions)
    finally:
        if kind == "box":
            syncs = rcv.stop()
        else:
            rcv.stop()
    problems = [f"smtp-source: {failure[0]}"] if failure else []
    if kind == "box":
        problems += rcv.errors()[:3]
    if kind == "bare":
        queued = rcv.queued()
        if queued != accepted:
            problems.append(f"{queued} messages in the spool, {accepted} accepted")
    else:
        problems += check_mailboxes(rcv.mailboxes(), USERS[0], accepted)
    shutil.rmtree(rcv.dir, ignore_errors=True)
    return {"rate": accepted / dt, "mbps": accepted * payload / dt / 1e6, "accepted": accepted, "problems": problems,
            "syncs": syncs}


def run(report):
    stop_postfix_daemon()
    exe = mpy.micropython_exe()
    report("box", f"odmrgw sim, code in its romfs image, a heap of {mpy.budget_heap()}",
           f"the budget; micropython: {exe}, {mpy.pointer_bits()}-bit")
    report("load generator", "Postfix smtp-source -d (one session per -s, no pipelining)")
    tmp = Path(tempfile.mkdtemp(prefix="bench_box"))
    try:
        for name, payload, count, sessions in LOADS:
            runs = {"box": [], "peer": [], "bare": []}
            for _ in range(ROUNDS):
                for kind in runs:
                    runs[kind].append(one_run(kind, tmp, payload, count, sessions))
            unit = "MB/s" if payload >= 1 << 20 else "msg/s"
            key = "mbps" if unit == "MB/s" else "rate"
            for kind, who in (("box", "box (odmrgw sim, policy + mailbox)"), ("peer", "aiosmtpd, file + fsync, own process"),
                              ("bare", "bare receiver (smtpd_sim, spool only)")):
                rates = [r[key] for r in runs[kind]]
                report(f"{name}: {who}", f"{statistics.median(rates):.1f} {unit}",
                       "runs " + ", ".join(f"{x:.1f}" for x in rates))
            ratios = [b[key] / p[key] if p[key] else 0 for b, p in zip(runs["box"], runs["peer"])]
            report(f"{name}: ratio box / peer", f"{statistics.median(ratios):.2f}x",
                   f"min {min(ratios):.2f}x, max {max(ratios):.2f}x over {ROUNDS} interleaved rounds; target >= 1.0x")
            bare = [b[key] / p[key] if p[key] else 0 for b, p in zip(runs["bare"], runs["peer"])]
            report(f"{name}: ratio bare receiver / peer", f"{statistics.median(bare):.2f}x",
                   f"min {min(bare):.2f}x, max {max(bare):.2f}x; not the box: no policy, no mailbox")
            syncs = [r["syncs"] / r["accepted"] for r in runs["box"] if r["syncs"] is not None and r["accepted"]]
            if syncs:
                report(f"{name}: box card syncs per accepted message", f"{statistics.median(syncs):.2f}",
                       "target <= 2; peer: 1 fsync per message")
            problems = [f"{kind} run {i + 1}: {p}" for kind in runs for i, r in enumerate(runs[kind]) for p in r["problems"]]
            report(f"{name}: mail check", "every accepted message in its mailbox exactly once" if not problems
                   else f"FAILED: {len(problems)} problems", "; ".join(problems[:4]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    from tests.bench.__main__ import report as _report

    run(_report)
