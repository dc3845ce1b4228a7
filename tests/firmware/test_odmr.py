# The ODMR customer against a scripted provider on loopback: every ATRN
# reply code, replies split across reads, the turned line delivering into
# the real receiver and spool, an AUTH failure, and the line dropped at
# every step (nothing the box did not answer with 250 counts as taken).
import asyncio

import support
from peers import CHALLENGE, Provider

# Validated before the firmware's modules load, as the box does at boot: the
# validator's code is dropped again and its room goes to what follows.
BASE = support.config({
    "hostname": "gw.example.test",
    "domains": ["example.test", "example.org"],
    "relay": {"host": "127.0.0.1", "tls": "none", "user": "office", "secret": "s3cret"},
    "users": {"alice": {"password": "pw", "addresses": ["alice@example.test"]}},
})

from gateway import odmr  # noqa: E402
from gateway.handlers import InboundHandler  # noqa: E402
from gateway.policy import Policy  # noqa: E402
from gateway.spool import Spool  # noqa: E402

# One process holds the scripted provider's side of the test as well as the
# box (client, receiver, policy, spool as .mpy, none of them dropped); the
# STARTTLS tests also hold a TLS context. 128k fails one test (160k before
# the client shrank). The pull on its own (88k) is measured in
# tests/e2e/test_odmr_pull.py. The validated config the box holds (every
# section, the schema's keys as qstrs) takes it from 160k to 192k.
MICROPYTHON_HEAP = "192k"

# A CA certificate (DER, made once with trustme) to load before STARTTLS;
# no handshake ever happens with it in these tests.
SOME_CA = bytes.fromhex(
    "308201c93082016fa003020102021462b693cd26320f041dce0f0ea33edf48112636f4300a06082a8648ce3d04030230"
    "4031173015060355040a0c0e74727573746d652076312e322e3131253023060355040b0c1c54657374696e6720434120"
    "235f4c4e53546437654f456c69454655703020170d3030303130313030303030305a180f333030303031303130303030"
    "30305a304031173015060355040a0c0e74727573746d652076312e322e3131253023060355040b0c1c54657374696e67"
    "20434120235f4c4e53546437654f456c69454655703059301306072a8648ce3d020106082a8648ce3d03010703420004"
    "2053c2d055c6d89db33cf23ab72e86c698eea4f05499df034cc40c4bdc0d251b88fecfbdff84f5ba5598dad1d7f52f57"
    "f9a232bc17075c97d01293cce49695c5a3453043301d0603551d0e0416041473659d514cabb705eca8778870cec2b918"
    "b8f7ba30120603551d130101ff040830060101ff020109300e0603551d0f0101ff040403020186300a06082a8648ce3d"
    "0403020348003045022100c85609955cc456d0f80c367eee55b9566a8d46bff81732b042405a1596cbcbd702200b048c"
    "e2921496acc380499c68c6d2eea6d97683ce480b3643c35c8ebba4a7dc"
)

GREETING = [b"220 relay.test ESMTP", b" ODMR\r\n"]
EHLO = [b"250-relay.test\r\n250-AU", b"TH CRAM-MD5\r\n250-ATRN\r", b"\n250 8BITMIME\r\n"]
LOGIN = [("expect", b"AUTH CRAM-MD5"), ("send", b"334 " + CHALLENGE + b"\r\n"), ("auth", None), ("send", b"235 2.7.0 ok\r\n")]
HELLO = [("send", GREETING), ("expect", b"EHLO gw.example.test"), ("send", EHLO)] + LOGIN


def _cfg(port, **relay):
    cfg = dict(BASE)
    cfg["relay"] = dict(BASE["relay"], port=port, **relay)
    return cfg


def _pull(script, card=None, **relay):
    """Runs one pull against the script: (outcome, provider, spool)."""
    card = card or support.Card()
    provider = Provider(script)

    async def main():
        server, port = await support.start_server(provider.handle)
        try:
            cfg = _cfg(port, **relay)
            spool = Spool(card.root + "/spool")
            handler = InboundHandler(cfg, spool, Policy(cfg))
            outcome = await odmr.pull(cfg, handler)
            if provider.connected:
                await asyncio.wait_for(provider.finished.wait(), 10)
            return outcome, spool
        finally:
            server.close()
            await server.wait_closed()

    outcome, spool = support.run(main())
    return outcome, provider, spool


def test_every_atrn_refusal_code_has_its_outcome():
    card = support.Card()
    # code: (retry soon?, ok?)
    cases = {453: (False, True), 450: (True, False), 451: (True, False), 502: (False, False),
             530: (False, False), 535: (False, False), 554: (False, False)}
    for code, (retry, ok) in cases.items():
        script = HELLO + [("expect", b"ATRN example.test,example.org"), ("send", [b"%d" % code, b" 4.0.0 see RFC 2645\r\n"]),
                          ("expect", b"QUIT"), ("send", b"221 bye\r\n")]
        outcome, provider, spool = _pull(script, card)
        assert not provider.problems and provider.done, (code, provider.problems)
        assert outcome.code == code and outcome.retry == retry and outcome.ok == ok, (code, outcome)
        assert outcome.pulled == 0 and str(code) in outcome.text


def test_multiline_atrn_refusal_split_across_reads():
    script = HELLO + [("expect", b"ATRN"), ("send", [b"451-busy: another ses", b"sion drains\r\n451 4.3.0 try", b" later\r\n"]),
                      ("expect", b"QUIT")]
    outcome, provider, _ = _pull(script)
    assert outcome.code == 451 and outcome.retry and "another session drains 4.3.0 try later" in outcome.text


MESSAGE = b"Subject: pulled\r\n\r\n..a stuffed line\r\nbody\r\n"


def _turned(deliveries, end=(("send", b"QUIT\r\n"), ("expect", b"221"))):
    """The provider's side after "250": EHLO, then the given deliveries."""
    steps = [("expect", b"220 "), ("send", b"EHLO relay.test\r\n"), ("reply", b"250 ")]
    return steps + deliveries + list(end)


def _deliver(rcpt, reply=b"250"):
    return [("send", b"MAIL FROM:<bob@outside.test>\r\n"), ("expect", b"250"), ("send", b"RCPT TO:<%s>\r\n" % rcpt),
            ("expect", reply)] + ([("send", b"DATA\r\n"), ("expect", b"354"), ("send", MESSAGE + b".\r\n"), ("expect", b"250")]
                                  if reply == b"250" else [("send", b"RSET\r\n"), ("expect", b"250")])


def test_250_turns_the_line_and_the_provider_delivers_into_the_spool():
    deliveries = _deliver(b"alice@example.test") + _deliver(b"bob@elsewhere.test", b"550 5.7.1") + _deliver(b"alice@example.test")
    # Exim hangs up right after QUIT without waiting for our 221: a clean end.
    script = HELLO + [("expect", b"ATRN"), ("send", b"250 OK now reversing the connection\r\n")] + _turned(
        deliveries, end=[("send", b"QUIT\r\n")])
    outcome, provider, spool = _pull(script)
    assert not provider.problems, provider.problems
    assert outcome.code == 250 and outcome.ok and outcome.pulled == 2 and not outcome.retry
    ids = spool.ids("local")
    assert len(ids) == 2
    for id in ids:
        assert support.rcpts(spool.envelope(id)) == [("alice@example.test", "local")]
        tail = b""
        buf = bytearray(256)  # small: the heap is cut up by now
        with spool.open(id) as body:
            n = body.readinto(buf)
            while n:
                tail = (tail + bytes(buf[:n]))[-64:]
                n = body.readinto(buf)
        assert tail.endswith(b"\r\n.a stuffed line\r\nbody\r\n")


def test_a_relay_that_talks_before_our_greeting_is_refused():
    # The client's replies and the turned line share one buffer: bytes the
    # provider sent before our 220 would be lost, so the pull stops there.
    script = HELLO + [("expect", b"ATRN"), ("send", b"250 OK now reversing the connection\r\nEHLO relay.test\r\n")]
    outcome, provider, spool = _pull(script)
    assert outcome.code == 421 and outcome.retry and "before the box greeted it" in outcome.text
    assert spool.ids("local") == []


def test_relay_without_atrn_keyword_is_not_an_odmr_port():
    script = [("send", GREETING), ("expect", b"EHLO"), ("send", b"250-relay.test\r\n250 AUTH CRAM-MD5\r\n")] + LOGIN + [("expect", b"QUIT")]
    outcome, provider, _ = _pull(script)
    assert outcome.code == 502 and not outcome.retry and "ATRN" in outcome.text
    assert not any(line.startswith(b"ATRN") for line in provider.seen)


def test_auth_failure_is_a_clear_error_without_retry():
    script = [("send", GREETING), ("expect", b"EHLO"), ("send", EHLO), ("expect", b"AUTH CRAM-MD5"),
              ("send", b"334 " + CHALLENGE + b"\r\n"), ("expect", b""), ("send", b"535 5.7.8 Authentication failed\r\n")]
    outcome, provider, _ = _pull(script)
    assert outcome.code == 535 and not outcome.retry and "office" in outcome.text and "s3cret" not in outcome.text
    assert not any(line.startswith(b"ATRN") for line in provider.seen)


def test_starttls_configured_but_not_offered_never_goes_on_in_clear():
    script = [("send", GREETING), ("expect", b"EHLO"), ("send", EHLO), ("expect", b"QUIT")]
    card = support.Card()
    outcome, provider, _ = _pull(script, card, tls="starttls", ca="/nonexistent.der")
    # No CA on the board: refused before even dialling.
    assert outcome.code == 554 and "ca" in outcome.text and not provider.connected
    ca = support.tmpdir() + "/ca.der"
    with open(ca, "wb") as f:
        f.write(SOME_CA)
    outcome, provider, _ = _pull(script, card, tls="starttls", ca=ca)
    assert outcome.code in (554,) and "STARTTLS" in outcome.text, outcome
    assert not any(line.startswith(b"AUTH") or line.startswith(b"ATRN") for line in provider.seen), provider.seen


def test_plain_login_is_not_sent_in_clear():
    script = [("send", GREETING), ("expect", b"EHLO"), ("send", b"250-relay.test\r\n250-AUTH PLAIN LOGIN\r\n250 ATRN\r\n")]
    outcome, provider, _ = _pull(script)
    assert outcome.code == 504 and not outcome.retry
    assert provider.seen == [b"EHLO gw.example.test"]


def test_line_dropped_at_every_step_loses_nothing_and_retries():
    full = HELLO + [("expect", b"ATRN"), ("send", b"250 reversing\r\n")] + _turned(_deliver(b"alice@example.test"))
    sent = full.index(("send", MESSAGE + b".\r\n"))
    card = support.Card()
    taken = 0
    for cut in range(len(full)):
        outcome, provider, spool = _pull(full[:cut] + [("close", None)], card)
        got = len(spool.ids("local"))
        # Once the whole message is on the wire the box keeps it (even if the
        # provider hangs up before it reads the 250 and so sends it again: a
        # duplicate, never a loss); a message cut short is never kept.
        assert got - taken == (1 if cut > sent else 0), (cut, outcome, got, taken)
        assert outcome.pulled <= got - taken
        taken = got
        if outcome.code != 250:
            assert outcome.retry and outcome.code == 421, (cut, outcome)


def test_atrn_gets_its_own_long_wait():
    # The provider may scan its queue for minutes before it answers ATRN
    # (10 minutes allowed); every other reply has the ordinary timeout.
    from gateway.smtp.client import SMTPClient

    card = support.Card()
    with support.patched(SMTPClient, command_timeout=0.3), support.patched(odmr, ATRN_TIMEOUT=5):
        slow_atrn = HELLO + [("expect", b"ATRN"), ("sleep", 1), ("send", b"453 You have no mail\r\n"), ("expect", b"QUIT")]
        outcome, provider, _ = _pull(slow_atrn, card)
        assert outcome.code == 453 and outcome.ok and not provider.problems
        slow_ehlo = [("send", GREETING), ("expect", b"EHLO"), ("sleep", 1), ("send", EHLO)]
        outcome, provider, _ = _pull(slow_ehlo, card)
        assert outcome.code == 421 and outcome.retry and "within" in outcome.text, outcome
