"""The desktop relay against real peers: fetchmail's ODMR client, smtplib,
aiosmtpd. Every relay is a `python -m host_tools relay` child on free ports."""
import asyncio
import email
import smtplib
import socket
import time

import pytest

from host_tools.relay import config, service
from host_tools.relay.testing import RelayProcess, Sink, fetchmail, write_config


@pytest.fixture
def start_relay(tmp_path):
    started = []

    def start(**kw):
        cfg = write_config(tmp_path / f"relay{len(started)}.toml", tmp_path / "queue", **kw)
        relay = RelayProcess(cfg).start()
        started.append(relay)
        return relay

    yield start
    for r in started:
        r.stop()


@pytest.fixture
def sink():
    sinks = []

    def make(**kw):
        s = Sink(**kw)
        sinks.append(s.serve())
        return s, sinks[-1].port

    yield make
    for s in sinks:
        s.stop()


def message(n, size=300, to="a@example.test"):
    text = (f"message {n} " * (size // 10 + 1))[:size]
    body = "\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    return f"From: x@outside.test\r\nTo: {to}\r\nSubject: test {n}\r\nMessage-ID: <m{n}@outside.test>\r\n\r\n{body}\r\n"


def send(port, rcpts, data, mail_from="x@outside.test"):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        return s.sendmail(mail_from, rcpts, data)


def queued(relay):
    out = relay.queue("list")
    assert out.returncode == 0, out.stderr
    return [line.split() for line in out.stdout.splitlines()]


def subjects(sink):
    return sorted(email.message_from_bytes(m[2])["Subject"] for m in sink.messages)


def test_fetchmail_drains_every_message_exactly_once(start_relay, sink):
    relay = start_relay()
    s, port = sink()
    with smtplib.SMTP("127.0.0.1", relay.ports["smtp"], timeout=30) as c:
        for n in range(30):
            rcpts = ["a@example.test", "b@example.test"] if n % 3 == 0 else ["a@example.test"]
            c.sendmail("x@outside.test", rcpts, message(n))
    assert len(queued(relay)) == 30
    run = fetchmail(relay.ports["odmr"], port)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "ATRN example.test" in run.stdout
    assert subjects(s) == sorted(f"test {n}" for n in range(30))
    two = [m for m in s.messages if len(m[1]) == 2]
    assert len(two) == 10
    assert queued(relay) == []
    # Nothing left: a second poll hears 453 and delivers nothing.
    again = fetchmail(relay.ports["odmr"], port)
    assert "453" in again.stdout
    assert len(s.messages) == 30
    relay.stop()
    assert "s3cret" not in relay.log.read_text()


def test_every_held_domain_is_a_box_and_atrn_drains_only_those_asked_for(start_relay, sink):
    relay = start_relay(accounts=[("office", "s3cret", ["example.test", "branch.test"])])
    s, port = sink()
    send(relay.ports["smtp"], ["a@example.test", "b@branch.test"], message(1))
    run = fetchmail(relay.ports["odmr"], port, domains=("branch.test",))
    assert run.returncode == 0, run.stdout[-2000:]
    assert [m[1] for m in s.messages] == [["b@branch.test"]]
    left = queued(relay)
    assert len(left) == 1 and left[0][1] == "domains/example.test"


def test_never_an_open_relay(start_relay):
    relay = start_relay()
    with smtplib.SMTP("127.0.0.1", relay.ports["smtp"], timeout=30) as c:
        c.ehlo("outside.test")
        assert c.mail("x@outside.test")[0] == 250
        code, text = c.rcpt("victim@elsewhere.test")
        assert code == 550 and text.startswith(b"5.7.1")
        assert c.rcpt("a@example.test")[0] == 250
        assert c.rcpt("a@sub.example.test")[0] == 550
        assert b"AUTH" not in c.ehlo_resp
    assert queued(relay) == []


def test_pipelined_transactions_get_their_replies_in_order(start_relay, sink):
    """PIPELINING as Postfix uses it: MAIL, the RCPTs and DATA in one write,
    the text and the next transaction's commands in the next (RFC 2920)."""
    relay = start_relay()
    with socket.create_connection(("127.0.0.1", relay.ports["smtp"]), timeout=30) as s:
        f = s.makefile("rb")

        def replies(n):
            out = []
            while len(out) < n:
                line = f.readline()
                assert line, out
                if line[3:4] == b" ":
                    out.append(line[:3].decode())
            return out

        assert replies(1) == ["220"]
        s.sendall(b"EHLO outside.test\r\n")
        ehlo = [f.readline()]
        while ehlo[-1][3:4] == b"-":
            ehlo.append(f.readline())
        assert b"250-PIPELINING\r\n" in ehlo
        s.sendall(b"MAIL FROM:<x@outside.test>\r\nRCPT TO:<v@elsewhere.test>\r\nRCPT TO:<a@example.test>\r\nDATA\r\n")
        assert replies(4) == ["250", "550", "250", "354"]
        s.sendall(message(1).encode() + b".\r\nMAIL FROM:<y@outside.test>\r\nRCPT TO:<v@elsewhere.test>\r\nDATA\r\n")
        assert replies(4) == ["250", "250", "550", "503"]      # no recipient taken: no DATA
        s.sendall(b"RSET\r\nMAIL FROM:<z@outside.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        assert replies(4) == ["250", "250", "250", "354"]
        s.sendall(message(2, to="b@example.test").encode() + b".\r\nQUIT\r\n")
        assert replies(2) == ["250", "221"]
    assert [row[-1] for row in queued(relay)] == ["a@example.test", "b@example.test"]
    box, port = sink()
    assert fetchmail(relay.ports["odmr"], port).returncode == 0
    assert [m[2].split(b"\r\n\r\n", 1)[1] for m in box.messages] == \
        [message(n).split("\r\n\r\n", 1)[1].encode() for n in (1, 2)]


def test_the_replies_to_a_pipelined_group_go_back_in_one_write(tmp_path, monkeypatch):
    """RFC 2920 §3.2: the relay holds its replies while more commands are
    waiting and answers the group at once. The relay runs in this process
    here, so that its writes can be counted."""
    writes = []
    real = asyncio.StreamWriter.write
    monkeypatch.setattr(asyncio.StreamWriter, "write", lambda self, data: (writes.append(bytes(data)), real(self, data)))

    def client(port):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            f = s.makefile("rb")

            def reply():
                while (line := f.readline())[3:4] == b"-":
                    pass
                return line[:3]

            assert reply() == b"220"
            s.sendall(b"EHLO outside.test\r\n")
            assert reply() == b"250"
            writes.clear()
            s.sendall(b"MAIL FROM:<x@outside.test>\r\nRCPT TO:<v@elsewhere.test>\r\nRCPT TO:<a@example.test>\r\nDATA\r\n")
            assert [reply() for _ in range(4)] == [b"250", b"550", b"250", b"354"]
            group = list(writes)
            s.sendall(b"Subject: one\r\n\r\nbody\r\n.\r\nQUIT\r\n")
            assert [reply() for _ in range(2)] == [b"250", b"221"]
            return group

    async def run():
        relay = service.Relay(config.load(write_config(tmp_path / "relay.toml", tmp_path / "queue")))
        servers = await relay.start()
        try:
            return await asyncio.to_thread(client, servers[0].sockets[0].getsockname()[1])
        finally:
            for server in servers:
                server.close()
            relay.committer.stop()

    (group,) = asyncio.run(run())
    assert group.count(b"\r\n") == 4


def test_size_limit(start_relay):
    relay = start_relay(limits={"max_size": 2000})
    with smtplib.SMTP("127.0.0.1", relay.ports["smtp"], timeout=30) as c:
        c.ehlo("outside.test")
        assert c.esmtp_features["size"] == "2000"
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            c.sendmail("x@outside.test", ["a@example.test"], message(1, size=5000), mail_options=["SIZE=5100"])
        assert e.value.smtp_code == 552
        # A client that does not announce the size is stopped after DATA.
        c.rset()
        c.mail("x@outside.test")
        c.rcpt("a@example.test")
        code, _ = c.data(message(2, size=5000).encode())
        assert code == 552
    assert queued(relay) == []


def test_queue_admin_commands(start_relay, tmp_path):
    relay = start_relay()
    f = tmp_path / "msg.eml"
    f.write_text("From: x@outside.test\nTo: a@example.test, someone@elsewhere.test\nSubject: injected\n\nhi\n")
    out = relay.queue("inject", str(f))
    assert out.returncode == 0, out.stderr
    id = out.stdout.strip()
    rows = queued(relay)
    assert [(r[0], r[1]) for r in rows] == [(id, "domains/example.test")]
    assert rows[0][-1] == "a@example.test"
    shown = relay.queue("show", id)
    assert shown.returncode == 0
    assert "from: <x@outside.test>" in shown.stdout and "Subject: injected\n" in shown.stdout
    assert relay.queue("inject", str(f), "--to", "b@elsewhere.test").returncode == 2
    assert relay.queue("drop", id).returncode == 0
    assert queued(relay) == []
    assert relay.queue("drop", id).returncode == 1
    assert relay.queue("show", id).returncode == 1


def test_expired_mail_bounces_to_the_sender_with_a_dsn(start_relay, sink):
    hop, hop_port = sink()
    relay = start_relay(next_hop=f"127.0.0.1:{hop_port}", limits={"expire_after": 1, "expire_check": 0.2})
    send(relay.ports["smtp"], ["a@example.test", "b@example.test"], message(7))
    deadline = time.monotonic() + 20
    while not hop.messages and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hop.messages, relay.log.read_text()
    mail_from, rcpts, data = hop.messages[0]
    assert mail_from == "" or mail_from == "<>"
    assert rcpts == ["x@outside.test"]
    dsn = email.message_from_bytes(data)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    parts = dsn.get_payload()
    status = parts[1].as_string()
    assert "Final-Recipient: rfc822; a@example.test" in status and "Final-Recipient: rfc822; b@example.test" in status
    assert "Status: 4.4.7" in status and "Action: failed" in status
    assert "Subject: test 7" in parts[2].as_string()
    deadline = time.monotonic() + 10
    while queued(relay) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert queued(relay) == []


def test_sigterm_stops_the_relay_cleanly(start_relay):
    relay = start_relay()
    assert relay.stop() == 0


def test_a_second_relay_on_the_same_queue_refuses_to_start(start_relay):
    start_relay()
    with pytest.raises(RuntimeError, match="in use by another relay"):
        start_relay()
