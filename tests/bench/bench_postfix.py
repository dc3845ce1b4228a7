"""The provider's scale path (issue 17): a private Postfix hands the held
domain's mail to the relay (transport_maps from `odmrgw relay
postfix-config`); one ATRN then drains it into the box's side (the scripted
customer with aiosmtpd on the turned line, announcing PIPELINING as the
box's receiver does). The peers, on the same Postfix, each a process of its
own: the same load to an aiosmtpd that writes each message to a file and
fsyncs it before its 250 (the synced peer: a plain listener that keeps
what it takes, the target), and to an aiosmtpd that keeps nothing and syncs
nothing (the plain peer: what Postfix manages when nothing behind it writes
to disk).

Load generator: Postfix's smtp-source, SESSIONS parallel sessions of
COUNT x SIZE into Postfix. Rounds are interleaved (relay path, synced
peer, plain peer; the next round starts one later), ROUNDS of them; each
figure is reported as the median with min and max over the rounds, each
ratio as the median of the rounds' ratios. Per round, through the relay:

    intake      first message into Postfix until the last is in the relay's
                queue (COUNT "queued" lines in its log, each written after
                the message's fsync), nobody draining
    drain       then one ATRN: from the login until the relay hangs up
    whole path  a second load with the box pulling all the while (one ATRN
                after the other, as soon as the last one ended; 0.1 s after
                a 453): first message into Postfix until the last is in the box
    peer        first message into Postfix until the last is in the peer
    CPU         the relay's process (all its threads, user + system) during
                the intake and during the whole path, and each peer's during
                its load, per message: on a machine shared with other work
                the rates swing with the load, the CPU a message costs much
                less

The relay keeps up with Postfix when intake/peer and whole/peer are about 1
(they cannot be much above: Postfix delivers both), and its drain when
drain/peer is 1 or more."""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from host_tools import mpy
from host_tools.relay import postfix as postfix_config
from host_tools.relay.testing import Customer, Postfix, RelayProcess, Sink, write_config
from tests.bench.bench_box import Peer, _smtp_source

COUNT = 500
SIZE = 10 * 1024
SESSIONS = 4
ROUNDS = 5
LIMIT = 600         # seconds for any one phase before the bench gives up on it


class CountingPeer(Peer):
    """tests/bench/peer_sink.py on a free port, fsyncing into `root` if given;
    .count is what it has taken."""

    MODULE = "tests.bench.peer_sink"

    def __init__(self, root=None):
        self.port = mpy.free_port()
        self.count = 0
        self.start(str(self.port), *([str(root)] if root else []))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.count = int(line)


def smtp_source(port, to):
    """Start COUNT messages into Postfix; the running smtp-source."""
    return subprocess.Popen([_smtp_source(), "-d", "-s", str(SESSIONS), "-m", str(COUNT), "-l", str(SIZE),
                             "-M", "outside.test", "-f", "x@outside.test", "-t", to, f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def until(done, deadline):
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
    return done()


def cpu_seconds(pid):
    """User + system CPU time of a process so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_load(port, to, arrived):
    """Seconds from the load's start until `arrived()` reaches COUNT; None if
    it never did (or smtp-source failed), with the reason."""
    t0 = time.monotonic()
    load = smtp_source(port, to)
    complete = until(lambda: arrived() >= COUNT, t0 + LIMIT)
    dt = time.monotonic() - t0
    try:
        load.wait(LIMIT)
    except subprocess.TimeoutExpired:
        load.kill()
        load.wait()
    if load.returncode:
        return None, f"smtp-source: {load.stderr.strip().splitlines()[-1:]}"
    return (dt, "") if complete else (None, f"{arrived()} of {COUNT} arrived")


class QueuedLines:
    """How many messages the relay has logged as queued since this was made
    (it logs each one once it is on disk)."""

    def __init__(self, log):
        self.log = open(log, "rb")
        self.log.seek(0, os.SEEK_END)
        self.count = 0
        self.rest = b""

    def __call__(self):
        lines = (self.rest + self.log.read()).split(b"\n")
        self.rest = lines.pop()
        self.count += sum(line.startswith(b"relay: queued ") for line in lines)
        return self.count


def relay_round(mx, relay):
    """(intake s, drain s, whole path s, (intake CPU s, whole path CPU s), problem) of one round through the relay."""
    cpu = cpu_seconds(relay.proc.pid)
    intake, problem = timed_load(mx, "a@example.test", QueuedLines(relay.log))
    cpu = cpu_seconds(relay.proc.pid) - cpu
    if intake is None:
        return None, None, None, None, problem
    box = Sink(pipelining=True)
    t0 = time.monotonic()
    c = Customer(relay.ports["odmr"], timeout=LIMIT)
    c.login()
    c.turn(box, timeout=LIMIT)
    drain = time.monotonic() - t0
    problem = check(box)
    if problem:
        return None, None, None, None, problem
    box = Sink(pipelining=True)
    puller = threading.Thread(target=pull, args=(relay, box, time.monotonic() + LIMIT))
    whole_cpu = cpu_seconds(relay.proc.pid)
    puller.start()
    whole, problem = timed_load(mx, "a@example.test", lambda: len(box.messages))
    puller.join()
    return intake, drain, whole, (cpu, cpu_seconds(relay.proc.pid) - whole_cpu), problem or check(box)


def pull(relay, box, deadline):
    """The box pulling into `box` until it holds COUNT: one ATRN after the
    other, 0.1 s after a 453."""
    while len(box.messages) < COUNT and time.monotonic() < deadline:
        c = Customer(relay.ports["odmr"], timeout=LIMIT)
        if c.login()[0] == 250:
            c.turn(box, timeout=LIMIT)
        else:
            c.close()
            time.sleep(0.1)


def check(box):
    """What is wrong with the box's mail: every message once, none missing."""
    ids = {next((line for line in data.split(b"\r\n") if line.lower().startswith(b"message-id:")), b"")
           for _, _, data in box.messages}
    if len(box.messages) != COUNT or len(ids) != COUNT:
        return f"the box got {len(box.messages)} messages, {len(ids)} distinct, of {COUNT}"
    return ""


def spread(values, fmt=".0f", unit=""):
    """The median with (min-max)."""
    return f"{statistics.median(values):{fmt}}{unit} ({min(values):{fmt}}-{max(values):{fmt}})"


def run(report):
    if not shutil.which("postfix") or os.geteuid() != 0:
        report("Postfix -> relay -> box", "skipped", "needs Debian's postfix and root")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "synced").mkdir()
        peers = {"synced": CountingPeer(tmp / "synced"), "plain": CountingPeer()}
        intake_port, mx = mpy.free_port(), mpy.free_port()
        conf = write_config(tmp / "relay.toml", tmp / "queue",
                            listen={"smtp": f"127.0.0.1:{intake_port}", "odmr": "127.0.0.1:0"})
        (tmp / "postfix").mkdir()
        lines = subprocess.run([sys.executable, "-m", "host_tools", "relay", "postfix-config", "--config", str(conf),
                                "--write", "--maps", str(tmp / "postfix")],
                               cwd=mpy.REPO, capture_output=True, text=True, timeout=60, check=True).stdout
        # The synced peer takes the domain synced.test, by a transport entry of its own.
        with open(tmp / "postfix" / postfix_config.TRANSPORT, "a") as f:
            f.write(f"synced.test smtp:[127.0.0.1]:{peers['synced'].port}\n")
        relay = RelayProcess(conf)
        postfix = Postfix(tmp / "postfix", mx, f"127.0.0.1:{peers['plain'].port}", main=lines)
        rates = {"intake": [], "drain": [], "whole": [], "synced": [], "plain": []}
        ms = {"relay": [], "whole": [], "synced": [], "plain": []}        # CPU per message
        problems = []
        order = ["relay", "synced", "plain"]
        try:
            relay.start()
            postfix.start()
            for n in range(ROUNDS):
                for path in order[n % 3:] + order[:n % 3]:
                    if path == "relay":
                        intake, drain, whole, cpu, problem = relay_round(mx, relay)
                        if whole:
                            rates["intake"].append(COUNT / intake)
                            rates["drain"].append(COUNT / drain)
                            rates["whole"].append(COUNT / whole)
                            ms["relay"].append(cpu[0] * 1000 / COUNT)
                            ms["whole"].append(cpu[1] * 1000 / COUNT)
                    else:
                        peer = peers[path]
                        base, cpu = peer.count, cpu_seconds(peer.proc.pid)
                        to = "b@synced.test" if path == "synced" else "b@outside.test"
                        dt, problem = timed_load(mx, to, lambda: peer.count - base)
                        if dt:
                            rates[path].append(COUNT / dt)
                            ms[path].append((cpu_seconds(peer.proc.pid) - cpu) * 1000 / COUNT)
                    if problem:
                        problems.append(f"round {n + 1}, {path}: {problem}")
        finally:
            postfix.stop()
            relay.stop()
            for peer in peers.values():
                peer.stop()
        note = f"{COUNT} x {SIZE // 1024} KB, smtp-source -s {SESSIONS}, {ROUNDS} rounds: median (min-max)"
        if problems or not len(rates["intake"]) == len(rates["synced"]) == len(rates["plain"]):
            report("Postfix -> relay -> box", "INCOMPLETE", "; ".join(problems))
            if not rates["intake"] or not rates["synced"] or not rates["plain"]:
                return
        report("Postfix -> relay queue (intake)", f"{spread(rates['intake'])} msg/s", note)
        report("relay ATRN drain -> box (aiosmtpd customer)", f"{spread(rates['drain'])} msg/s")
        report("Postfix -> relay -> box, whole path", f"{spread(rates['whole'])} msg/s", "the box pulling meanwhile")
        report("Postfix -> aiosmtpd, fsync each (synced peer)", f"{spread(rates['synced'])} msg/s")
        report("Postfix -> aiosmtpd, keeps nothing (plain peer)", f"{spread(rates['plain'])} msg/s")
        for peer in ("synced", "plain"):
            rounds = list(zip(rates["intake"], rates["drain"], rates["whole"], rates[peer]))
            report(f"intake / {peer} peer", spread([i / p for i, _, _, p in rounds], ".2f", "x"),
                   "about 1: the relay keeps up with Postfix" if peer == "synced" else "")
            report(f"drain / {peer} peer", spread([d / p for _, d, _, p in rounds], ".2f", "x"))
            report(f"whole path / {peer} peer", spread([w / p for _, _, w, p in rounds], ".2f", "x"))
        report("CPU per message: relay intake", f"{spread(ms['relay'], '.1f')} ms", "its process, all threads")
        report("CPU per message: relay, whole path", f"{spread(ms['whole'], '.1f')} ms", "intake and drain at once")
        report("CPU per message: synced peer", f"{spread(ms['synced'], '.1f')} ms")
        report("CPU per message: plain peer", f"{spread(ms['plain'], '.1f')} ms")
