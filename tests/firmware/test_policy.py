# Who may send where: the address map, catch-all, quotas, the LAN allow-list,
# and the relay rules of both handlers.
import support

# Validated before the firmware's modules load, as the box does at boot: the
# validator's code is dropped again and its room goes to what follows.
CFG = support.config({
    "domains": ["example.test", "other.test"],
    "users": {
        "alice": {"password": "alicepw", "addresses": ["alice@example.test", "Sales@Example.test"], "quota": 10000},
        "bob": {"password": "bobpw", "addresses": ["bob@example.test"]},
    },
    "catch_all": {"example.test": "bob"},
    "smtp": {"allow": ["192.168.0.0/16", "127.0.0.0/8", "10.1.2.3"]},
})

from gateway import ipv4  # noqa: E402
from gateway.handlers import InboundHandler, LanHandler  # noqa: E402
from gateway.policy import Policy, split_address  # noqa: E402

# The policy's handlers pull in the SMTP engine; with this module compiled
# from source on 8-byte pointers that was 80k with a partial config. A
# config validated as the box holds it (the schema's keys as qstrs, every
# section filled in) takes it to 96k.
MICROPYTHON_HEAP = "96k"


class Session:
    def __init__(self, peer="127.0.0.1", user=None, secure=False, size=0):
        self.peer = peer
        self.size = size
        self.user = user
        self.secure = secure


class Usage:
    """Stands in for Mailboxes' one method the quota check reads."""

    def __init__(self, used):
        self.n = used

    def used(self, user):
        return self.n


def test_addresses_map_to_users_case_insensitively():
    p = Policy(CFG)
    assert p.user_for("alice@example.test") == "alice"
    assert p.user_for("<ALICE@EXAMPLE.TEST>") == "alice"
    assert p.user_for("sales@example.test") == "alice"
    assert p.user_for("bob@example.test") == "bob"


def test_catch_all_takes_unknown_local_parts_of_its_domain_only():
    p = Policy(CFG)
    assert p.user_for("nobody@example.test") == "bob"
    assert p.user_for("nobody@other.test") is None
    assert p.check_local_rcpt("nobody@other.test") == (550, "5.1.1 No such user here")
    assert p.is_local_domain("other.test") and p.is_local_domain("EXAMPLE.TEST.")
    assert not p.is_local_domain("outside.test")


def test_routing_tricks_never_match_even_with_a_catch_all():
    p = Policy(CFG)
    for trick in ("x%outside.test@example.test", "outside.test!x@example.test", '"x@outside.test"@example.test',
                  "x@outside.test@example.test", "@example.test"):
        assert p.user_for(trick) is None, trick
        assert p.check_local_rcpt(trick)[0] == 550


def test_source_route_is_judged_by_its_final_address():
    assert split_address("<@relay.test,@b.test:bob@Example.test>") == ("bob", "example.test")
    assert split_address("no-domain") == ("", "")
    p = Policy(CFG)
    assert p.user_for("<@example.test:x@outside.test>") is None


def test_quota_full_is_temporary_too_big_is_permanent():
    p = Policy(CFG)
    assert p.check_local_rcpt("alice@example.test", 20000) == (552, "5.2.2 Message larger than the mailbox quota")
    p.mailboxes = Usage(9000)
    assert p.check_local_rcpt("alice@example.test", 500) is None
    assert p.check_local_rcpt("alice@example.test", 2000)[0] == 452
    p.mailboxes = Usage(10000)
    assert p.check_local_rcpt("alice@example.test") == (452, "4.2.2 Mailbox full, try again later")
    # No quota set: never full.
    assert p.check_local_rcpt("bob@example.test", 1 << 30) is None


def test_cidr_by_hand():
    assert ipv4.network("192.168.0.0/16") == (0xC0A80000, 0xFFFF0000)
    assert ipv4.network("10.1.2.3") == (0x0A010203, 0xFFFFFFFF)
    assert ipv4.network("0.0.0.0/0") == (0, 0)
    for bad in ("10.0.0.0/33", "10.0.0/8", "10.0.0.256", "10.0.0.0/x", " 10.0.0.0/8", "::1"):
        with support.raises(ValueError):
            ipv4.network(bad)
    p = Policy(CFG)
    assert p.allowed_peer("192.168.44.5")
    assert p.allowed_peer("127.0.0.1")
    assert p.allowed_peer("10.1.2.3")
    assert not p.allowed_peer("10.1.2.4")
    assert not p.allowed_peer("192.169.0.1")
    assert not p.allowed_peer("::1")
    assert not p.allowed_peer("garbage")
    assert not p.allowed_peer(None)


def test_inbound_accepts_our_users_only():
    p = Policy(CFG)
    h = InboundHandler(CFG, None, p)
    s = Session()
    h.mail(s, "someone@provider.test", {})
    assert h.rcpt(s, "alice@example.test") == "local"
    assert h.rcpt(s, "x@outside.test")[0] == 550
    assert h.rcpt(s, "x@outside.test")[1].startswith("5.7.1")
    assert h.rcpt(s, "nobody@other.test") == (550, "5.1.1 No such user here")


def test_inbound_declared_size_reaches_the_quota_check():
    # The engine keeps MAIL's SIZE= with the transaction (session.size);
    # the handler holds none of it.
    from gateway.smtp.server import SMTPSession

    p = Policy(CFG)
    h = InboundHandler(CFG, None, p)
    stream = support.ScriptedStream([b"EHLO relay\r\nMAIL FROM:<x@provider.test> SIZE=50000\r\nRCPT TO:<alice@example.test>\r\n"
                                     b"RSET\r\nMAIL FROM:<x@provider.test> SIZE=100 BODY=8BITMIME\r\n"
                                     b"RCPT TO:<alice@example.test>\r\nQUIT\r\n"])
    support.run(SMTPSession(stream, stream, h, "192.0.2.9", bytearray(600)).run())
    codes = [line[:3] for line in bytes(stream.out).split(b"\r\n") if line[3:4] == b" "]
    assert codes[-5:] == [b"552", b"250", b"250", b"250", b"221"]
    assert not hasattr(h, "size")


def test_lan_refuses_networks_outside_the_allow_list():
    p = Policy(CFG)
    assert LanHandler(CFG, None, p).connect(Session("192.168.1.9")) is None
    code, text = LanHandler(CFG, None, p).connect(Session("8.8.8.8"))
    assert code == 554 and text.startswith("5.7.1")


def test_one_peer_normaliser_for_what_each_runtime_reports():
    from gateway.compat import peer_ip

    assert peer_ip(("192.168.1.9", 4000)) == "192.168.1.9"  # ESP32, CPython
    assert peer_ip("::ffff:10.1.2.3") == "10.1.2.3"  # an IPv4-mapped IPv6 peer
    assert peer_ip(("::FFFF:10.1.2.3", 4000, 0, 0)) == "10.1.2.3"
    assert peer_ip(None) is None
    if support.MICROPYTHON:  # the unix port's raw sockaddr_in
        assert peer_ip(b"\x02\x00\x0f\xa0\x7f\x00\x00\x09" + bytes(8)) == "127.0.0.9"


def test_lan_relays_outside_only_when_authenticated():
    p = Policy(CFG)
    h = LanHandler(CFG, None, p)
    assert h.ehlo_keywords(Session()) == ["AUTH CRAM-MD5"]  # PLAIN and LOGIN only inside TLS
    assert h.ehlo_keywords(Session(secure=True)) == ["AUTH PLAIN LOGIN CRAM-MD5"]
    assert h.auth_password(Session(), "alice") == "alicepw"
    assert h.auth_password(Session(), "mallory") is None
    anon = Session()
    h.mail(anon, "alice@example.test", {})
    assert h.rcpt(anon, "bob@example.test") == "local"
    for rcpt in ("x@outside.test", "<@example.test:x@outside.test>", "x@outside.test."):
        code, text = h.rcpt(anon, rcpt)
        assert code == 550 and text.startswith("5.7.1"), rcpt
    for rcpt in ("x%outside.test@example.test", '"x@outside.test"@example.test', "outside.test!x@example.test"):
        assert h.rcpt(anon, rcpt)[0] == 550, rcpt
    authed = Session(user="alice")
    h.mail(authed, "alice@example.test", {})
    assert h.rcpt(authed, "x@outside.test") == "out"
    assert h.rcpt(authed, "bob@example.test") == "local"


def test_lan_hands_off_after_the_250():
    calls = []
    p = Policy(CFG)

    class Spool:
        pass

    spool = Spool()
    h = LanHandler(CFG, spool, p, lambda s: calls.append(("local", s)), lambda: calls.append(("out",)))
    s = Session(user="bob")
    h.mail(s, "bob@example.test", {})
    h.delivered(s, "id1", tuple(h.rcpt(s, a) for a in ("alice@example.test", "x@outside.test")))
    assert calls == [("local", spool), ("out",)]
    # A later message for outside only does not touch the mailboxes.
    h.mail(s, "bob@example.test", {})
    h.delivered(s, "id2", (h.rcpt(s, "y@outside.test"),))
    assert calls[2:] == [("out",)]


def test_forward_targets_by_user_or_domain_for_known_recipients_only():
    cfg = dict(CFG)
    cfg["forward"] = {"alice": "10.0.0.5:2525", "Other.test": "10.0.0.6"}
    cfg["users"] = dict(CFG["users"], carol={"password": "c", "addresses": ["carol@other.test"], "quota": 0})
    p = Policy(cfg)
    assert p.forward_for("sales@example.test") == "10.0.0.5:2525"  # alice's address
    assert p.forward_for("carol@other.test") == "10.0.0.6"  # by domain
    assert p.forward_for("bob@example.test") is None
    assert p.forward_for("unknown@other.test") is None  # no user, no forward
    assert Policy(CFG).forward_for("alice@example.test") is None


def test_a_failing_delivery_after_the_250_does_not_break_the_session():
    def card_full(spool):
        raise OSError(28)

    from gateway import log

    lines = []
    h = LanHandler(CFG, None, Policy(CFG), card_full)
    s = Session()
    h.mail(s, "bob@example.test", {})
    queues = (h.rcpt(s, "alice@example.test"),)
    log.attach(lines.append)
    try:
        h.delivered(s, "id1", queues)
    finally:
        log.attach(None)
    assert len(lines) == 1 and "id1" in lines[0] and "kept in the spool" in lines[0]
