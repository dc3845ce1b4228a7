"""The desktop relay: 1000 x 10 KB messages queued (SMTP in, fsync per message)
and drained by fetchmail's ODMR client into an aiosmtpd listener. Peers in
the same run: the same messages into a bare aiosmtpd listener (no queue, no
fsync), and the drain straight into aiosmtpd on the turned line (no fetchmail
pipe in between).

fetchmail forwards the turned line to its smtphost one line at a time, so
with Nagle on its side and delayed ACKs on the listener's, each message
waits ~40 ms; the same drain into a listener that acknowledges at once
(TCP_QUICKACK) shows what the relay itself sustains through fetchmail."""
import smtplib
import tempfile
import time
from pathlib import Path

from host_tools.relay.testing import Customer, RelayProcess, Sink, fetchmail, write_config

COUNT = 1000
SIZE = 10 * 1024


def messages():
    line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    for n in range(COUNT):
        head = f"From: x@outside.test\r\nTo: a@example.test\r\nSubject: bench {n}\r\nMessage-ID: <b{n}@outside.test>\r\n\r\n"
        yield head + line * ((SIZE - len(head)) // len(line))


def ingest(port, msgs):
    t0 = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as c:
        for m in msgs:
            c.sendmail("x@outside.test", ["a@example.test"], m)
    return len(msgs) / (time.monotonic() - t0)


def drain_fetchmail(relay, msgs, quickack):
    ingest(relay.ports["smtp"], msgs)
    sink = Sink()
    listener = sink.serve(quickack=quickack)
    try:
        t0 = time.monotonic()
        out = fetchmail(relay.ports["odmr"], listener.port, timeout=900)
        rate = len(msgs) / (time.monotonic() - t0)
    finally:
        listener.stop()
    complete = out.returncode == 0 and len(sink.messages) == len(msgs)
    return rate, "" if complete else f"; INCOMPLETE: {len(sink.messages)} delivered"


def run(report):
    msgs = list(messages())
    with tempfile.TemporaryDirectory() as tmp:
        relay = RelayProcess(write_config(Path(tmp) / "relay.toml", Path(tmp) / "queue"))
        sink = Sink()
        listener = sink.serve()
        relay.start()
        try:
            bare = ingest(listener.port, msgs)
            listener.stop()
            queued = ingest(relay.ports["smtp"], msgs)
            report("SMTP into the relay queue (fsync each)", f"{queued:.0f} msg/s", f"{COUNT} x {SIZE // 1024} KB")
            report("SMTP into bare aiosmtpd (peer, in memory)", f"{bare:.0f} msg/s", f"relay/bare {queued / bare:.2f}x")

            t0 = time.monotonic()
            c = Customer(relay.ports["odmr"], timeout=900)
            c.login()
            direct_sink = Sink()
            c.turn(direct_sink, timeout=900)
            direct = len(direct_sink.messages) / (time.monotonic() - t0)
            fast, note_fast = drain_fetchmail(relay, msgs, quickack=True)
            slow, note_slow = drain_fetchmail(relay, msgs, quickack=False)
            report("ODMR drain to fetchmail -> aiosmtpd", f"{slow:.0f} msg/s",
                   f"{slow * SIZE / 1e6:.2f} MB/s; delayed ACKs on fetchmail's line-by-line pipe{note_slow}")
            report("ODMR drain to fetchmail -> aiosmtpd (QUICKACK)", f"{fast:.0f} msg/s",
                   f"{fast * SIZE / 1e6:.1f} MB/s{note_fast}")
            report("ODMR drain straight into aiosmtpd (peer)", f"{direct:.0f} msg/s",
                   f"fetchmail path {fast / direct:.2f}x of direct")
        finally:
            relay.stop()
