"""TLS (trustme certificates) on every relay listener, and the submission
listener for the boxes' outgoing mail."""
import base64
import smtplib
import ssl
import time

import pytest

from host_tools.relay.testing import Customer, Sink, tls_files, tls_turn
from tests.host.test_relay import sink, start_relay  # noqa: F401 (fixtures)

ACCOUNTS = [("office", "s3cret", ["example.test"]), ("other", "pw2", ["other.test"])]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return tls_files(tmp_path_factory.mktemp("tls"))


def tls_relay(start_relay, certs, **kw):
    listen = {"smtp": "127.0.0.1:0", "odmr": "127.0.0.1:0", "odmr_tls": "127.0.0.1:0", "submission": "127.0.0.1:0"}
    return start_relay(listen=listen, tls=certs[:2], accounts=ACCOUNTS, **kw)


def keywords(lines):
    return [line[4:] for line in lines[1:]]


def plain(user, secret):
    return base64.b64encode(f"\0{user}\0{secret}".encode()).decode()


def queued(relay):
    return [line.split() for line in relay.queue("list").stdout.splitlines()]


def test_starttls_on_the_odmr_port(start_relay, certs):
    relay = tls_relay(start_relay, certs)
    c = Customer(relay.ports["odmr"], tls_context=certs[3])
    try:
        code, lines = c.cmd("EHLO customer.test")
        assert "STARTTLS" in keywords(lines) and "AUTH CRAM-MD5" in keywords(lines)
        assert c.cmd("AUTH PLAIN " + plain("office", "s3cret"))[0] == 538
        c.starttls()
        assert c.sock.version().startswith("TLS")
        assert c.cmd("ATRN")[0] == 503                  # TLS forgets the EHLO
        code, lines = c.cmd("EHLO customer.test")
        assert "AUTH CRAM-MD5 PLAIN LOGIN" in keywords(lines) and "STARTTLS" not in keywords(lines)
        assert c.cmd("STARTTLS")[0] == 502
        assert c.cmd("AUTH PLAIN !!!")[0] == 501
        assert c.cmd("AUTH PLAIN " + plain("office", "nope"))[0] == 535
        assert c.cmd("AUTH PLAIN " + plain("office", "s3cret"))[0] == 235
        assert c.cmd("ATRN")[0] == 453
    finally:
        c.close()


def test_auth_login_under_implicit_tls(start_relay, certs):
    relay = tls_relay(start_relay, certs)
    c = Customer(relay.ports["odmr_tls"], tls_context=certs[3], implicit_tls=True)
    try:
        assert c.greeting[0] == 220
        code, lines = c.cmd("EHLO customer.test")
        assert "AUTH CRAM-MD5 PLAIN LOGIN" in keywords(lines) and "STARTTLS" not in keywords(lines)
        assert c.cmd("AUTH LOGIN")[0] == 334
        assert c.cmd(base64.b64encode(b"office").decode())[0] == 334
        assert c.cmd(base64.b64encode(b"s3cret").decode())[0] == 235
        assert c.cmd("ATRN example.test")[0] == 453
    finally:
        c.close()


def test_a_client_that_does_not_trust_the_certificate_fails(start_relay, certs):
    relay = tls_relay(start_relay, certs)
    with pytest.raises(ssl.SSLCertVerificationError):
        Customer(relay.ports["odmr_tls"], tls_context=ssl.create_default_context(), implicit_tls=True)


@pytest.mark.parametrize("port", ["odmr_tls", "odmr"])
def test_mail_is_delivered_after_the_turn_over_tls(start_relay, certs, port):
    # fetchmail does not speak STARTTLS on ODMR, and over implicit TLS its
    # select()-based pipe stalls on lines buffered inside OpenSSL; so the
    # customer here is aiosmtpd on the TLS transport itself.
    relay = tls_relay(start_relay, certs)
    with smtplib.SMTP("127.0.0.1", relay.ports["smtp"], timeout=30) as c:
        c.starttls(context=certs[3])
        for n in range(5):
            c.sendmail("x@outside.test", ["a@example.test"], f"Subject: tls {n}\r\n\r\nhi\r\n")
    sink = Sink()
    assert tls_turn(relay.ports[port], certs[3], sink, implicit_tls=port == "odmr_tls") == 250
    assert sorted(m[2].split(b"Subject: ")[1][:5] for m in sink.messages) == [f"tls {n}".encode() for n in range(5)]
    assert queued(relay) == []


def test_starttls_on_inbound_smtp(start_relay, certs):
    relay = tls_relay(start_relay, certs)
    with smtplib.SMTP("127.0.0.1", relay.ports["smtp"], timeout=30) as c:
        c.ehlo("outside.test")
        assert c.has_extn("starttls")
        c.starttls(context=certs[3])
        c.ehlo("outside.test")
        assert not c.has_extn("auth")
        c.sendmail("x@outside.test", ["a@example.test"], "Subject: over tls\r\n\r\nhi\r\n")
    rows = queued(relay)
    assert len(rows) == 1
    shown = relay.queue("show", rows[0][0]).stdout
    assert "with ESMTPS" in shown


def test_submission_requires_auth_and_own_domains(start_relay, certs):
    relay = tls_relay(start_relay, certs)
    with smtplib.SMTP("127.0.0.1", relay.ports["submission"], timeout=30) as c:
        c.ehlo("box.example.test")
        assert not c.has_extn("auth")                  # not before TLS
        assert c.mail("a@example.test")[0] == 530
        c.starttls(context=certs[3])
        c.ehlo("box.example.test")
        assert "PLAIN" in c.esmtp_features["auth"] and "CRAM-MD5" in c.esmtp_features["auth"]
        c.login("office", "s3cret")                     # smtplib picks CRAM-MD5
        code, text = c.mail("boss@other.test")
        assert code == 553 and text.startswith(b"5.7.1")
        assert c.mail("boss@example.test")[0] == 250
        assert c.rcpt("friend@elsewhere.test")[0] == 250
        assert c.data(b"Subject: out\r\n\r\nhello\r\n")[0] == 250
        c.rset()
        assert c.mail("<>")[0] == 250                   # the box's own bounces
    rows = queued(relay)
    assert [(r[1], r[-1]) for r in rows] == [("outbox", "friend@elsewhere.test")]


def test_submission_plain_and_throttle(start_relay, certs):
    relay = tls_relay(start_relay, certs, limits={"auth_fail_delay": 0.2, "auth_max_failures": 2})
    with smtplib.SMTP("127.0.0.1", relay.ports["submission"], timeout=30) as c:
        c.starttls(context=certs[3])
        c.ehlo("box")
        c.user, c.password = "office", "s3cret"
        assert c.auth("PLAIN", c.auth_plain)[0] == 235
    with smtplib.SMTP("127.0.0.1", relay.ports["submission"], timeout=30) as c:
        c.starttls(context=certs[3])
        c.ehlo("box")
        c.user, c.password = "office", "wrong"
        t0 = time.monotonic()
        for _ in range(2):
            with pytest.raises(smtplib.SMTPAuthenticationError):
                c.auth("PLAIN", c.auth_plain)
        assert time.monotonic() - t0 >= 0.4
        code, _ = c.docmd("AUTH", "PLAIN " + plain("office", "s3cret"))
        assert code == 421                              # blocked, even with the right password now
    relay.stop()
    log = relay.log.read_text()
    assert "failed login" in log or "AUTH" not in log
    assert "s3cret" not in log and "wrong" not in log and plain("office", "s3cret") not in log


def test_submission_forwards_to_next_hop_and_bounces_refusals(start_relay, sink):
    hop, hop_port = sink(policy=lambda a: "550 5.1.1 unknown" if a.startswith("nobody@") else None)
    relay = start_relay(listen={"submission": "127.0.0.1:0", "odmr": "127.0.0.1:0"},
                        next_hop=f"127.0.0.1:{hop_port}", accounts=ACCOUNTS)
    with smtplib.SMTP("127.0.0.1", relay.ports["submission"], timeout=30) as c:
        c.login("office", "s3cret")                     # no [tls]: allowed, with a warning in the log
        refused = c.sendmail("boss@example.test", ["friend@elsewhere.test", "nobody@elsewhere.test"],
                             "Subject: out\r\n\r\nhello\r\n")
        assert refused == {}                            # accepted for the queue; the next hop decides later
    deadline = time.monotonic() + 15
    while (not hop.messages or len(queued(relay)) != 1) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [m[1] for m in hop.messages] == [["friend@elsewhere.test"]]
    assert "authenticated as office" in hop.messages[0][2].decode()
    # The refusal came back as a DSN, queued for the sender's own domain (the box fetches it by ATRN).
    rows = queued(relay)
    assert [(r[1], r[-1]) for r in rows] == [("domains/example.test", "boss@example.test")]
    assert "Status: 5.1.1" in relay.queue("show", rows[0][0]).stdout


def test_plaintext_sent_behind_starttls_is_never_obeyed(start_relay, certs):
    # Commands pipelined after STARTTLS arrive in the clear and could be a
    # man in the middle's (CVE-2011-0411): they must be thrown away.
    relay = tls_relay(start_relay, certs)
    c = Customer(relay.ports["odmr"], tls_context=certs[3])
    try:
        c.cmd("EHLO customer.test")
        c.send(b"STARTTLS\r\nNOOP\r\n")
        assert c.reply()[0] == 220
        c.sock = c.tls_context.wrap_socket(c.sock, server_hostname="relay.test")
        c.file = c.sock.makefile("rb")
        code, lines = c.cmd("EHLO customer.test")
        assert code == 250 and lines[0].startswith("250-relay.test"), lines
    finally:
        c.close()
