"""Backscatter through the relay (issue 12, item 7): a spammer sends to
made-up addresses of a held domain with a victim's address as the sender,
hoping the relay bounces the spam to the victim. The relay refuses unknown
recipients at RCPT (so the sending MTA deals with it), quotes only header
fields in the bounces it still sends, and sends one outside sender only so
many bounces. Real peers: smtplib, the scripted ODMR customer, aiosmtpd."""
import email
import email.policy
import smtplib

import pytest

from host_tools.relay.smtp_in import InboundHandler
from host_tools.relay.testing import Customer, RelayProcess, Sink, write_config

SPAM_HEADERS = ("From: Victim <victim@outside.test>\r\nTo: x%y@example.test\r\n"
                "Subject: BUY CHEAP PILLS NOW\r\nMessage-ID: <spam1@outside.test>\r\n")
SPAM_BODY = "Visit http://pills.example.invalid/ for the best prices.\r\n"


@pytest.fixture
def start(tmp_path):
    started = []

    def run(recipients=None, **limits):
        account = ("office", "s3cret", ["example.test", "branch.test"]) + ((recipients,) if recipients else ())
        cfg = write_config(tmp_path / "relay.toml", tmp_path / "queue", accounts=[account],
                           limits={"turn_timeout": 10, **limits})
        started.append(RelayProcess(cfg).start())
        return started[-1]

    yield run
    for r in started:
        r.stop()


def queued(relay):
    return [line.split() for line in relay.queue("list").stdout.splitlines()]


def test_unknown_recipients_are_refused_at_rcpt_and_nothing_is_queued(start):
    relay = start(recipients=["alice@example.test", "@branch.test"])
    with smtplib.SMTP("127.0.0.1", relay.ports["smtp"], timeout=30) as c:
        c.ehlo("spammer.test")
        assert c.mail("victim@outside.test")[0] == 250
        code, text = c.rcpt("x%y@example.test")
        assert (code, text) == (550, b"5.1.1 <x%y@example.test>: no such recipient here")
        assert c.rcpt("bob@example.test")[0] == 550
        assert c.rcpt("ALICE@Example.TEST")[0] == 250       # case does not make an address unknown
        assert c.rcpt("anyone@branch.test")[0] == 250       # "@branch.test" takes the whole domain
        assert c.data(SPAM_HEADERS + "\r\n" + SPAM_BODY)[0] == 250
    assert sorted(row[-1] for row in queued(relay)) == ["ALICE@Example.TEST", "anyone@branch.test"]


def test_guessing_addresses_ends_the_session(start):
    relay = start(recipients=["alice@example.test"])
    with smtplib.SMTP("127.0.0.1", relay.ports["smtp"], timeout=30) as c:
        c.ehlo("spammer.test")
        c.mail("victim@outside.test")
        codes = [c.rcpt(f"guess{n}@example.test")[0] for n in range(InboundHandler.MAX_REFUSED)]
        assert codes == [550] * (InboundHandler.MAX_REFUSED - 1) + [421]
        with pytest.raises(smtplib.SMTPServerDisconnected):
            c.rcpt("alice@example.test")


def refuse_all(address):
    return "550 5.1.1 no such user"


def bounces_in_outbox(relay):
    out = []
    for row in queued(relay):
        if row[1] == "outbox":
            shown = relay.queue("show", row[0]).stdout
            out.append(email.message_from_string(shown.split("\n\n", 1)[1], policy=email.policy.compat32))
    return out


def drain(relay, handler):
    c = Customer(relay.ports["odmr"])
    try:
        assert c.login()[0] == 250
        c.turn(handler)
    finally:
        c.close()


@pytest.mark.parametrize("separator", ["\r\n", ""], ids=["with-blank-line", "without-blank-line"])
def test_a_bounce_quotes_header_fields_only(start, separator):
    # No recipient list: the relay takes the mail and the box refuses it.
    relay = start()
    with smtplib.SMTP("127.0.0.1", relay.ports["smtp"], timeout=30) as c:
        c.sendmail("victim@outside.test", ["x%y@example.test"], SPAM_HEADERS + separator + SPAM_BODY)
    drain(relay, Sink(refuse_all))
    (dsn,) = bounces_in_outbox(relay)
    assert dsn.get_content_type() == "multipart/report"
    parts = dsn.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    quoted = parts[2].get_payload()
    assert "Subject: BUY CHEAP PILLS NOW" in quoted and "Message-ID: <spam1@outside.test>" in quoted
    # The body never travels: before the fix a message without a blank line
    # came back whole.
    assert "pills.example.invalid" not in dsn.as_string()


def test_bounces_to_one_outside_sender_are_rate_limited(start):
    relay = start(bounces_per_sender=2)
    with smtplib.SMTP("127.0.0.1", relay.ports["smtp"], timeout=30) as c:
        for n in range(4):
            c.sendmail("victim@outside.test", [f"x{n}@example.test"], SPAM_HEADERS + "\r\n" + SPAM_BODY)
        c.sendmail("other@outside.test", ["y@example.test"], SPAM_HEADERS + "\r\n" + SPAM_BODY)
        for n in range(3):      # a sender of our own always hears of its failures
            c.sendmail("alice@example.test", [f"z{n}@branch.test"], SPAM_HEADERS + "\r\n" + SPAM_BODY)
    drain(relay, Sink(refuse_all))
    sent = sorted(str(m["To"]) for m in bounces_in_outbox(relay))
    assert sent == ["<other@outside.test>", "<victim@outside.test>", "<victim@outside.test>"]
    own = [row for row in queued(relay) if row[1] == "domains/example.test"]
    assert len(own) == 3 and all(row[-1] == "alice@example.test" for row in own)
    relay.stop()
    assert relay.log.read_text().count("no bounce for") == 2


def test_a_huge_header_block_is_quoted_only_up_to_the_cap():
    from host_tools.relay.dsn import MAX_HEADERS, headers_of

    fields = b"".join(b"X-Spam-%d: %s\r\n" % (n, b"pills " * 10) for n in range(2000))
    quoted = headers_of(fields + b"\r\nbody\r\n")
    assert 0 < len(quoted) <= MAX_HEADERS and quoted.endswith(b"\r\n") and fields.startswith(quoted)
