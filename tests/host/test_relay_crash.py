"""kill -9 of the relay process loses nothing: not mail it has said 250 to,
not mail it was in the middle of delivering after the turn."""
import email
import hashlib
import random
import smtplib
import threading
import time

import pytest

from host_tools.relay.testing import Customer, RelayProcess, Sink, fetchmail, write_config


def message(n, size=2000):
    body = "".join(f"line {i} of message {n}\r\n" for i in range(size // 24))
    digest = hashlib.sha256(body.encode()).hexdigest()
    return f"Subject: m{n}\r\nMessage-ID: <m{n}@outside.test>\r\nX-Digest: {digest}\r\n\r\n{body}"


def check_intact(raw):
    msg = email.message_from_bytes(raw)
    body = raw.split(b"\r\n\r\n", 1)[1].decode()
    assert hashlib.sha256(body.encode()).hexdigest() == msg["X-Digest"], msg["Subject"]
    return msg["Subject"]


@pytest.fixture
def relay_cfg(tmp_path):
    return write_config(tmp_path / "relay.toml", tmp_path / "queue")


def test_kill_9_in_the_middle_of_a_delivery_loses_nothing(relay_cfg, tmp_path):
    relay = RelayProcess(relay_cfg).start()
    sink = Sink(delay=0.02)
    listener = sink.serve()
    try:
        with smtplib.SMTP("127.0.0.1", relay.ports["smtp"], timeout=30) as c:
            for n in range(60):
                c.sendmail("x@outside.test", ["a@example.test"], message(n))
        first = {}
        t = threading.Thread(target=lambda: first.setdefault("run", fetchmail(relay.ports["odmr"], listener.port)))
        t.start()
        deadline = time.monotonic() + 30
        while len(sink.messages) < 20 and time.monotonic() < deadline:
            time.sleep(0.005)
        relay.kill()
        t.join(60)
        cut = len(sink.messages)
        assert 20 <= cut < 60, "the kill should land in the middle of the drain"

        relay.start()
        run = fetchmail(relay.ports["odmr"], listener.port)
        assert run.returncode == 0, run.stdout[-2000:]
        got = [check_intact(m[2]) for m in sink.messages]
        assert set(got) == {f"m{n}" for n in range(60)}
        # §6.1's price: at most the one message in flight at the kill comes twice.
        assert len(got) - 60 <= 1
        assert relay.queue("list").stdout == ""
        # the bodies of the delivered messages are swept too, the killed drain's included
        assert list((tmp_path / "queue" / "domains" / "example.test").iterdir()) == []
    finally:
        relay.stop()
        listener.stop()


# Eight sessions at once: their messages are committed in shared batches
# (groupcommit.py), so a kill lands in the middle of a batch too.
@pytest.mark.parametrize("sessions", [1, 8])
def test_kill_9_at_any_moment_of_intake_keeps_every_acknowledged_message(relay_cfg, sessions):
    acked = []
    rng = random.Random(2645)
    relay = RelayProcess(relay_cfg)
    try:
        for round_ in range(3):
            relay.start()
            stop = threading.Event()

            def sender(base, port=relay.ports["smtp"]):
                n = base
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                        while not stop.is_set():
                            c.sendmail("x@outside.test", ["a@example.test", "b@example.test"], message(n, 4000))
                            acked.append(f"m{n}")
                            n += 1
                except (smtplib.SMTPException, OSError):
                    pass        # the relay died under us: that message was never acknowledged

            threads = [threading.Thread(target=sender, args=(round_ * 100000 + s * 10000,)) for s in range(sessions)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.2, 0.6))
            relay.kill()
            stop.set()
            for t in threads:
                t.join(30)
        assert len(acked) > 10

        relay.start()
        sink = Sink()
        c = Customer(relay.ports["odmr"])
        assert c.login()[0] == 250
        c.turn(sink)
        got = [check_intact(m[2]) for m in sink.messages]
        assert set(acked) <= set(got)
        # A message whose 250 was lost in the kill may be there too (the client will resend it).
        assert len(set(got) - set(acked)) <= 3 * sessions
        assert all(sorted(m[1]) == ["a@example.test", "b@example.test"] for m in sink.messages)
        assert relay.queue("list").stdout == ""
    finally:
        relay.stop()
