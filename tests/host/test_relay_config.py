"""relay.toml: the issue's example works as written; every mistake names its key."""
import pytest

from host_tools.relay.config import ConfigError, load

EXAMPLE = '''
hostname = "relay.test"
queue = "relay-queue"                 # directory
[listen]
smtp = "127.0.0.1:2525"               # mail for held domains
odmr = "127.0.0.1:3366"               # RFC 2645 (366 in production; STARTTLS offered when [tls] is set)
odmr_tls = "127.0.0.1:3367"           # optional, implicit TLS
submission = "127.0.0.1:5587"         # optional, the boxes' outgoing mail
[tls]                                 # optional
cert = "relay-cert.pem"
key = "relay-key.pem"
[[account]]
user = "office"
secret = "s3cret"
domains = ["example.test"]
[outbound]                            # optional
next_hop = "127.0.0.1:2526"
'''


def write(tmp_path, text):
    import trustme

    cert = trustme.CA().issue_cert("relay.test")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "relay-cert.pem")
    cert.private_key_pem.write_to_path(tmp_path / "relay-key.pem")
    p = tmp_path / "relay.toml"
    p.write_text(text)
    return p


def test_the_example_from_the_issue_loads(tmp_path):
    cfg = load(write(tmp_path, EXAMPLE))
    assert cfg.hostname == "relay.test"
    assert cfg.queue == tmp_path / "relay-queue"          # relative to the config file
    assert cfg.listen == {"smtp": ("127.0.0.1", 2525), "odmr": ("127.0.0.1", 3366),
                          "odmr_tls": ("127.0.0.1", 3367), "submission": ("127.0.0.1", 5587)}
    assert cfg.cert == tmp_path / "relay-cert.pem"
    assert cfg.accounts["office"].domains == ["example.test"]
    assert cfg.next_hop == ("127.0.0.1", 2526)
    assert cfg.limits["max_size"] == 10240000 and cfg.limits["expire_after"] == 5 * 86400
    assert "s3cret" not in repr(cfg.accounts["office"])


@pytest.mark.parametrize("change, key", [
    (("smtp = \"127.0.0.1:2525\"", "smtp = \"localhost\""), "listen.smtp"),
    (("smtp = ", "pop3 = "), "listen.pop3"),
    (("[tls]                                 # optional\ncert = \"relay-cert.pem\"\nkey = \"relay-key.pem\"\n", ""),
     "listen.odmr_tls"),
    (("domains = [\"example.test\"]", "domains = [\"not a domain\"]"), "account[0].domains"),
    (("domains = [\"example.test\"]", "domains = []"), "account[0].domains"),
    (("secret = \"s3cret\"", "secret = \"\""), "account[0].secret"),
    (("hostname = ", "hostnam = "), "hostnam"),
    (("queue = \"relay-queue\"", ""), "queue"),
    (("[outbound]", "[limits]\nexpire_after = \"soon\"\n[outbound]"), "limits.expire_after"),
    (("[outbound]", "[limits]\nmax_size = -1\n[outbound]"), "limits.max_size"),
    (("[outbound]", "[limits]\nmax_sise = 1\n[outbound]"), "limits.max_sise"),
    (("next_hop = \"127.0.0.1:2526\"", "next_hop = \"127.0.0.1:99999\""), "outbound.next_hop"),
    (("domains = [\"example.test\"]", "domains = [\"example.test\"]\nrecipients = [\"a@other.test\"]"),
     "account[0].recipients"),
    (("domains = [\"example.test\"]", "domains = [\"example.test\"]\nrecipients = [\"a b@example.test\"]"),
     "account[0].recipients"),
    (("domains = [\"example.test\"]", "domains = [\"example.test\"]\nrecipients = []"), "account[0].recipients"),
    (("[outbound]", "[limits]\nbounces_per_sender = 1.5\n[outbound]"), "limits.bounces_per_sender"),
])
def test_mistakes_name_their_key(tmp_path, change, key):
    assert change[0] in EXAMPLE
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, EXAMPLE.replace(*change)))
    assert e.value.key == key


def test_durations_take_units(tmp_path):
    text = EXAMPLE.replace("[outbound]", "[limits]\nexpire_after = \"3d\"\ntimeout = \"90s\"\nauth_block = 60\n[outbound]")
    lim = load(write(tmp_path, text)).limits
    assert (lim["expire_after"], lim["timeout"], lim["auth_block"]) == (3 * 86400, 90, 60)


def test_a_missing_certificate_is_named(tmp_path):
    p = write(tmp_path, EXAMPLE)
    (tmp_path / "relay-key.pem").unlink()
    with pytest.raises(ConfigError) as e:
        load(p)
    assert e.value.key == "tls.key"


def test_recipient_lists_take_addresses_and_whole_domains(tmp_path):
    text = EXAMPLE.replace('domains = ["example.test"]', 'domains = ["example.test", "branch.test"]\n'
                           'recipients = ["Alice@Example.test", "@branch.test"]')
    cfg = load(write(tmp_path, text))
    assert cfg.accounts["office"].recipients == {"alice@example.test", "@branch.test"}
    assert cfg.knows("ALICE@example.test") and cfg.knows("x@branch.test")
    assert not cfg.knows("bob@example.test") and not cfg.knows("alice@outside.test")
    assert load(write(tmp_path, EXAMPLE)).knows("anyone@example.test")     # no list: the whole domain


def test_a_bad_certificate_names_the_file(tmp_path):
    p = write(tmp_path, EXAMPLE)
    (tmp_path / "relay-cert.pem").write_text("not a certificate")
    with pytest.raises(ConfigError) as e:
        load(p)
    assert e.value.key == "tls" and str(tmp_path / "relay-cert.pem") in str(e.value) and "_ssl.c" not in str(e.value)


def test_a_port_out_of_range_says_so(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, EXAMPLE.replace("127.0.0.1:2526", "127.0.0.1:99999")))
    assert str(e.value) == "outbound.next_hop: port 99999 is out of range (0-65535)"
