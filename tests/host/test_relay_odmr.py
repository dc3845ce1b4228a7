"""The relay's ODMR listener against bad and awkward customers: a scripted
customer on a plain socket, and aiosmtpd serving the turned line."""
import smtplib
import time

import pytest

from host_tools.relay.testing import Customer, RelayProcess, Sink, write_config


@pytest.fixture
def relay(tmp_path):
    cfg = write_config(tmp_path / "relay.toml", tmp_path / "queue",
                       accounts=[("office", "s3cret", ["example.test", "branch.test"]),
                                 ("other", "pw2", ["other.test"])],
                       limits={"auth_fail_delay": 0.05, "auth_max_failures": 4, "turn_timeout": 5})
    r = RelayProcess(cfg).start()
    yield r
    r.stop()


def queue_mail(relay, rcpts, n=1, mail_from="x@outside.test"):
    with smtplib.SMTP("127.0.0.1", relay.ports["smtp"], timeout=30) as c:
        for i in range(n):
            c.sendmail(mail_from, rcpts, f"Subject: m{i}\r\nMessage-ID: <m{i}@x>\r\n\r\nbody {i}\r\n")


def queued(relay):
    return [line.split() for line in relay.queue("list").stdout.splitlines()]


@pytest.fixture
def customer(relay):
    opened = []

    def connect(**kw):
        c = Customer(relay.ports["odmr"], **kw)
        opened.append(c)
        return c

    yield connect
    for c in opened:
        c.close()


def test_greeting_and_ehlo_advertise_cram_md5_and_atrn_only(customer):
    c = customer()
    assert c.greeting[0] == 220
    code, lines = c.cmd("EHLO customer.test")
    assert code == 250
    keywords = [line[4:] for line in lines[1:]]
    assert "ATRN" in keywords and "AUTH CRAM-MD5" in keywords
    assert not any(k.startswith("STARTTLS") for k in keywords)   # no [tls] in this config


def test_atrn_without_auth_is_530_and_before_ehlo_is_503(customer):
    c = customer()
    assert c.cmd("ATRN")[0] == 503
    assert c.cmd("EHLO customer.test")[0] == 250
    assert c.cmd("ATRN example.test")[0] == 530


def test_auth_errors(customer):
    c = customer()
    c.cmd("EHLO customer.test")
    assert c.cmd("AUTH CRAM-MD5")[0] == 334
    assert c.cmd("!!not base64!!")[0] == 501
    assert c.cmd("AUTH CRAM-MD5")[0] == 334
    assert c.cmd("*")[0] == 501
    assert c.cram_md5("office", "wrong")[0] == 535
    assert c.cram_md5("nobody", "s3cret")[0] == 535
    assert c.cmd("AUTH PLAIN AG9mZmljZQBzM2NyZXQ=")[0] == 538      # PLAIN only under TLS
    assert c.cmd("AUTH GSSAPI")[0] == 504
    assert c.cmd("AUTH CRAM-MD5 xyz")[0] == 501
    assert c.cram_md5("office", "s3cret")[0] == 235
    assert c.cmd("AUTH CRAM-MD5")[0] == 503


def test_atrn_syntax_and_policy_codes(relay, customer):
    c = customer()
    c.cmd("EHLO customer.test")
    assert c.cram_md5("office", "s3cret")[0] == 235
    for bad in ("ATRN ,", "ATRN example.test,", "ATRN example.test,,branch.test", "ATRN bad_domain!",
                "ATRN -x.test", "ATRN " + "a" * 64 + ".test", "ATRN example.test branch.test"):
        assert c.cmd(bad)[0] == 501, bad
    assert c.cmd("ATRN other.test")[0] == 450           # another account's domain
    assert c.cmd("ATRN example.test,nowhere.test")[0] == 450
    assert c.cmd("ATRN")[0] == 453                      # nothing queued for the account's domains
    assert c.cmd("ATRN example.test , BRANCH.test")[0] == 453
    assert c.cmd("NOOP")[0] == 250 and c.cmd("RSET")[0] == 250
    assert c.cmd("QUIT")[0] == 221


def test_other_commands_are_502(customer):
    c = customer()
    for cmd in ("HELO customer.test", "MAIL FROM:<a@b.test>", "RCPT TO:<a@example.test>", "DATA", "VRFY x",
                "ETRN example.test", "TURN", "HELP"):
        assert c.cmd(cmd)[0] == 502, cmd
    assert c.cmd("EHLO customer.test")[0] == 250


def test_overlong_lines_and_garbage(customer):
    c = customer()
    assert c.cmd("EHLO " + "x" * 2000)[0] == 500
    assert c.cmd("NOOP")[0] == 250                   # the stream stays in step
    c.send(b"N\xffOP\r\n")
    assert c.reply()[0] == 500
    c.send(b"x" * 300000 + b"\r\n")
    assert c.reply()[0] == 500
    assert c.cmd("EHLO customer.test")[0] == 250
    assert c.cmd("AUTH CRAM-MD5")[0] == 334
    assert c.cmd("A" * 1500)[0] == 500               # an overlong SASL answer


def test_a_megabyte_without_a_line_end_gets_421(customer):
    c = customer()
    c.send(b"x" * (2 << 20))
    code, _ = c.reply()
    assert code == 421


def test_failed_logins_are_throttled_per_ip(relay, customer):
    c = customer()
    c.cmd("EHLO customer.test")
    t0 = time.monotonic()
    for _ in range(3):
        assert c.cram_md5("office", "wrong")[0] == 535
    assert time.monotonic() - t0 >= 3 * 0.05
    assert c.cram_md5("office", "wrong")[0] == 535
    assert c.cmd("AUTH CRAM-MD5")[0] == 421            # 4 failures: blocked now
    fresh = customer()
    assert fresh.greeting[0] == 421                     # and new connections too


def test_bad_commands_are_capped(customer):
    c = customer()
    codes = [c.cmd("BOGUS")[0] for _ in range(10)]
    assert codes[:9] == [502] * 9 and codes[9] == 421


def refuse(address):
    return {"gone@example.test": "550 5.1.1 no such user", "later@example.test": "452 4.2.2 mailbox full"}.get(address)


@pytest.mark.parametrize("pipelining", [False, True])
def test_per_recipient_results_bounce_and_defer(relay, customer, pipelining):
    queue_mail(relay, ["ok@example.test", "gone@example.test", "later@example.test"], mail_from="x@example.test")
    sink = Sink(refuse, pipelining=pipelining)
    c = customer()
    assert c.login(domains=["example.test"])[0] == 250
    c.turn(sink)
    # The 550 earned the sender (a held domain) a DSN, queued for this same
    # customer and delivered in the same session; the 452 recipient stays.
    assert [m[1] for m in sink.messages] == [["ok@example.test"], ["x@example.test"]]
    assert sink.messages[1][0] in ("", "<>")
    report = sink.messages[1][2].decode()
    assert "Final-Recipient: rfc822; gone@example.test" in report and "Status: 5.1.1" in report
    assert "Final-Recipient: rfc822; later@example.test" not in report
    assert [r[-1] for r in queued(relay)] == ["later@example.test"]

    # Next time round the deferred one is delivered.
    sink2 = Sink(pipelining=pipelining)
    c2 = customer()
    assert c2.login()[0] == 250
    c2.turn(sink2)
    assert [m[1] for m in sink2.messages] == [["later@example.test"]]
    assert queued(relay) == []


@pytest.mark.parametrize("pipelining", [False, True])
def test_a_message_every_recipient_refuses_is_bounced_and_gone(relay, customer, pipelining):
    queue_mail(relay, ["gone@example.test"], mail_from="x@outside.test")
    queue_mail(relay, ["later@example.test"], mail_from="x@outside.test")
    queue_mail(relay, ["ok@example.test"], mail_from="x@outside.test")
    sink = Sink(refuse, pipelining=pipelining)
    c = customer()
    assert c.login(domains=["example.test"])[0] == 250
    c.turn(sink)
    assert [m[1] for m in sink.messages] == [["ok@example.test"]]
    rows = queued(relay)
    # The bounce for an outside sender waits in the outbox (no next hop here).
    assert sorted((r[1], r[-1]) for r in rows) == [("domains/example.test", "later@example.test"),
                                                   ("outbox", "x@outside.test")]


def test_customer_dropping_the_line_after_the_turn_keeps_the_mail(relay, customer):
    queue_mail(relay, ["a@example.test"], n=3)
    c = customer()
    assert c.login(domains=["example.test"])[0] == 250
    c.close()
    time.sleep(0.5)
    assert len(queued(relay)) == 3
    # The domain is free again and the mail still all there.
    sink = Sink()
    c2 = customer()
    assert c2.login()[0] == 250
    c2.turn(sink)
    assert len(sink.messages) == 3 and queued(relay) == []


def test_customer_dropping_in_the_middle_keeps_the_rest(relay, customer):
    queue_mail(relay, ["a@example.test"], n=5)

    class Flaky(Sink):
        async def handle_DATA(self, server, session, envelope):
            if len(self.messages) == 2:
                server.transport.abort()
                return "451 gone"
            return await super().handle_DATA(server, session, envelope)

    sink = Flaky()
    c = customer()
    assert c.login()[0] == 250
    c.turn(sink)
    assert len(sink.messages) == 2
    assert len(queued(relay)) == 3


def test_a_second_session_for_a_domain_being_drained_gets_451(relay, customer):
    queue_mail(relay, ["a@example.test", "b@branch.test"])
    first = customer()
    assert first.login(domains=["example.test"])[0] == 250     # now silent: the relay waits for our 220
    second = customer()
    assert second.login(domains=["example.test"])[0] == 451
    assert second.cmd("ATRN branch.test")[0] == 250
    second.turn(Sink())
    first.close()


def test_pipelining_is_used_when_offered(relay, customer):
    queue_mail(relay, ["a@example.test", "b@example.test"], n=2)
    seen = []

    class Watch(Sink):
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            # Under PIPELINING the relay sent MAIL, every RCPT and DATA in one write.
            seen.append(server._reader._buffer.count(b"\r\n"))
            return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    c = customer()
    assert c.login()[0] == 250
    sink = Watch(pipelining=True)
    c.turn(sink)
    assert len(sink.messages) == 2
    assert seen and seen[0] >= 2        # later RCPT and DATA were already waiting


def test_sigterm_during_a_turn_stops_at_once_and_keeps_the_mail(relay, customer):
    queue_mail(relay, ["a@example.test"], n=2)
    c = customer()
    assert c.login()[0] == 250          # the relay now waits for our 220
    t0 = time.monotonic()
    assert relay.stop() == 0
    assert time.monotonic() - t0 < 5
    assert "Traceback" not in relay.log.read_text()
    relay.start()
    assert len(queued(relay)) == 2


def test_message_bytes_survive_the_round_trip(relay, customer):
    body = (b"Subject: bytes\r\n\r\n.leading dot\r\n.\r\n..two dots\r\n"
            b"caf\xc3\xa9 8-bit\r\n" + b"x" * 998 + b"\r\nlast line\r\n")
    with smtplib.SMTP("127.0.0.1", relay.ports["smtp"], timeout=30) as c:
        c.ehlo("outside.test")
        c.sendmail("x@outside.test", ["a@example.test"], body, mail_options=["BODY=8BITMIME"])
    sink = Sink(pipelining=True)
    c = customer()
    assert c.login()[0] == 250
    c.turn(sink)
    (got,) = sink.messages
    assert got[2].startswith(b"Received: from outside.test")
    assert got[2].split(b"\r\n", 3)[3] == body


def test_sessions_beyond_max_sessions_get_421(tmp_path):
    cfg = write_config(tmp_path / "relay.toml", tmp_path / "queue", limits={"max_sessions": 2})
    with RelayProcess(cfg) as relay:
        first, second = Customer(relay.ports["odmr"]), Customer(relay.ports["odmr"])
        try:
            assert first.greeting[0] == second.greeting[0] == 220
            third = Customer(relay.ports["odmr"])
            assert third.greeting[0] == 421
            third.close()
            first.cmd("QUIT")
            first.close()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                fourth = Customer(relay.ports["odmr"])
                code = fourth.greeting[0]
                fourth.close()
                if code == 220:
                    break
                time.sleep(0.05)
            assert code == 220
        finally:
            second.close()


def test_control_characters_from_peers_never_reach_headers(relay, customer):
    import socket

    s = socket.create_connection(("127.0.0.1", relay.ports["smtp"]), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"EHLO evil\rBcc: someone@elsewhere.test\r\n")
    while f.readline()[3:4] == b"-":
        pass
    for cmd in (b"MAIL FROM:<x@outside.test>", b"RCPT TO:<a@example.test>", b"DATA"):
        s.sendall(cmd + b"\r\n")
        f.readline()
    s.sendall(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
    assert f.readline().startswith(b"250")
    s.close()
    sink = Sink()
    c = customer()
    assert c.login()[0] == 250
    c.turn(sink)
    head = sink.messages[0][2].split(b"\r\n\r\n")[0]
    assert b"\nBcc:" not in head and b"\r" not in head.replace(b"\r\n", b"")


@pytest.mark.parametrize("answer", [b"garbage\r\n", b"250-" + b"x" * 5000 + b"\r\n", b"250-a\r\n251 b\r\n"])
def test_a_customer_answering_nonsense_keeps_the_mail(relay, customer, answer):
    queue_mail(relay, ["a@example.test"], n=2)
    c = customer()
    assert c.login()[0] == 250
    c.send(b"220 customer.test ready\r\n")
    assert c.file.readline().startswith(b"EHLO ")
    c.send(answer)
    assert c.file.readline() in (b"", b"QUIT\r\n")       # the relay gives up on this line
    c.close()
    time.sleep(0.3)
    assert len(queued(relay)) == 2
    assert "Traceback" not in relay.log.read_text()
    # And the domain is free for the next session.
    sink = Sink()
    c2 = customer()
    assert c2.login()[0] == 250
    c2.turn(sink)
    assert len(sink.messages) == 2
