"""The provider's scale path (issue 17): COUNT x 10 KB messages into a
private Postfix, which hands them to the relay (transport_maps from `odmrgw
relay postfix-config`); then one ATRN drains them into the box's side (the
scripted customer with aiosmtpd on the turned line). The peer in the same
run: the same Postfix delivering the same load to a plain aiosmtpd (its
relayhost), which is what Postfix manages when nothing behind it fsyncs.

Timed from the first message into Postfix until the last is in the relay's
queue (every .env on disk) or in the sink."""
import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host_tools import mpy
from host_tools.relay.testing import Customer, Postfix, RelayProcess, Sink, write_config

COUNT = 500
SIZE = 10 * 1024
LIMIT = 600         # seconds for any one phase before the bench gives up on it


def messages(to):
    line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    for n in range(COUNT):
        head = f"From: x@outside.test\r\nTo: {to}\r\nSubject: bench {n}\r\nMessage-ID: <p{n}@outside.test>\r\n\r\n"
        yield head + line * ((SIZE - len(head)) // len(line))


def push(port, to, source):
    """Send COUNT messages into Postfix over one connection; returns the start time."""
    t0 = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, timeout=60, source_address=(source, 0)) as c:
        for m in messages(to):
            c.sendmail("x@outside.test", [to], m)
    return t0


def until(done):
    deadline = time.monotonic() + LIMIT
    while not done() and time.monotonic() < deadline:
        time.sleep(0.02)
    return done()


def run(report):
    if not shutil.which("postfix") or os.geteuid() != 0:
        report("Postfix -> relay -> box", "skipped", "needs Debian's postfix and root")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sink = Sink()
        world = sink.serve()
        intake, mx = mpy.free_port(), mpy.free_port()
        conf = write_config(tmp / "relay.toml", tmp / "queue",
                            listen={"smtp": f"127.0.0.1:{intake}", "odmr": "127.0.0.1:0"})
        (tmp / "postfix").mkdir()
        lines = subprocess.run([sys.executable, "-m", "host_tools", "relay", "postfix-config", "--config", str(conf),
                                "--write", "--maps", str(tmp / "postfix")],
                               cwd=mpy.REPO, capture_output=True, text=True, timeout=60, check=True).stdout
        relay = RelayProcess(conf)
        postfix = Postfix(tmp / "postfix", mx, f"127.0.0.1:{world.port}", main=lines)
        try:
            relay.start()
            postfix.start()
            held = tmp / "queue" / "domains" / "example.test"
            t0 = push(mx, "a@example.test", "127.0.0.2")
            complete = until(lambda: held.is_dir() and len(list(held.glob("*.env"))) >= COUNT)
            into_relay = COUNT / (time.monotonic() - t0)
            t1 = time.monotonic()
            box = Sink()
            c = Customer(relay.ports["odmr"], timeout=LIMIT)
            c.login()
            c.turn(box, timeout=LIMIT)
            drain = len(box.messages) / (time.monotonic() - t1)
            whole = len(box.messages) / (time.monotonic() - t0)

            t0 = push(mx, "b@outside.test", "127.0.0.1")      # from mynetworks: relayed to the plain aiosmtpd
            plain_done = until(lambda: len(sink.messages) >= COUNT)
            plain = COUNT / (time.monotonic() - t0)
        finally:
            postfix.stop()
            relay.stop()
            world.stop()
        note = "" if complete and len(box.messages) == COUNT and plain_done else "; INCOMPLETE"
        report("Postfix -> relay queue (fsync each)", f"{into_relay:.0f} msg/s", f"{COUNT} x {SIZE // 1024} KB{note}")
        report("relay ATRN drain -> box (aiosmtpd customer)", f"{drain:.0f} msg/s")
        report("Postfix -> relay -> box, whole path", f"{whole:.0f} msg/s", "intake, then one ATRN")
        report("Postfix -> plain aiosmtpd (peer)", f"{plain:.0f} msg/s", f"relay intake/plain {into_relay / plain:.2f}x")
