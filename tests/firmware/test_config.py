# The gateway config: the example from the board issue validates as written,
# errors name the key, secrets never show, saves are replace-by-rename.
import json
import os

from support import raises, tmpdir
from gateway import config
from gateway.config import ConfigError

EXAMPLE = """{
  "hostname": "gw.example.test",
  "domains": ["example.test"],
  "relay":     {"host": "relay.example.net", "port": 366, "tls": "starttls", "server_name": "relay.example.net", "ca": "ca.der", "user": "office", "secret": "..."},
  "smarthost": {"host": "relay.example.net", "port": 587, "tls": "starttls", "server_name": "relay.example.net", "ca": "ca.der", "user": "office", "secret": "..."},
  "poll":      {"interval": 900},
  "smtp":      {"port": 25, "max_size": 52428800, "allow": ["192.168.0.0/16"]},
  "pop3":      {"port": 110},
  "users":     {"alice": {"password": "...", "addresses": ["alice@example.test", "info@example.test"]}},
  "catch_all": {"example.test": "alice"}
}"""


def example():
    return json.loads(EXAMPLE)


def error_for(cfg):
    with raises(ConfigError) as r:
        config.validate(cfg)
    return str(r.value)


def test_the_issue_example_validates_as_written():
    cfg = config.validate(example())
    assert cfg["relay"]["port"] == 366 and cfg["relay"]["tls"] == "starttls"
    assert cfg["smtp"]["max_size"] == 52428800
    assert cfg["users"]["alice"]["addresses"] == ["alice@example.test", "info@example.test"]
    assert cfg["catch_all"] == {"example.test": "alice"}
    windows = [{"from": "22:00", "to": "02:00", "interval": 900}]
    cfg = config.validate({"poll": {"interval": 7200, "utc_offset": -300, "debounce": 0, "windows": windows}})
    assert cfg["poll"]["windows"] == windows and cfg["poll"]["utc_offset"] == -300


def test_defaults_fill_an_empty_config():
    cfg = config.validate({})
    assert cfg["relay"]["port"] == 366
    assert cfg["smarthost"]["port"] == 587
    assert cfg["pop3"]["port"] == 110
    assert cfg["poll"]["interval"] == 900
    assert cfg["poll"]["debounce"] == 30 and cfg["poll"]["windows"] == []
    assert cfg["users"] == {} and cfg["domains"] == []
    # defaults are copies: changing one config never changes the next
    cfg["smtp"]["allow"].append("1.2.3.4/32")
    assert "1.2.3.4/32" not in config.validate({})["smtp"]["allow"]


def test_errors_name_the_key():
    cases = [
        ({"smtp": {"max_size": -1}}, "smtp.max_size: must be a positive integer"),
        ({"smtp": {"max_size": "big"}}, "smtp.max_size: must be a positive integer"),
        ({"pop3": {"port": 70000}}, "pop3.port: must be a port number (1-65535)"),
        ({"relay": {"tls": "ssl"}}, "relay.tls: must be one of implicit, starttls, none"),
        ({"relay": {"hots": "x"}}, "relay.hots: unknown key"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"smtp": {"allow": ["192.168.0.0/33"]}}, "smtp.allow: must be a list of networks like 192.168.0.0/16"),
        ({"domains": "example.test"}, "domains: must be a list of names"),
        ({"users": {"bob": {"addresses": ["bob"]}}}, "users.bob.addresses: 'bob' is not an address (user@domain)"),
        ({"users": {"bob": {"password": 5}}}, "users.bob.password: must be a string"),
        ({"catch_all": {"example.test": "carol"}}, "catch_all.example.test: no such user 'carol'"),
        ({"poll": 5}, "poll: must be an object {...}"),
        ({"listen": "10.0.0.0/8"}, "listen: must be an IPv4 address like 0.0.0.0"),
        ({"listen": "localhost"}, "listen: must be an IPv4 address like 0.0.0.0"),
        ({"poll": {"windows": [{"from": "7", "to": "19:00", "interval": 300}]}},
         'poll.windows[0].from: "7" is not a time from 00:00 to 23:59'),
        ({"poll": {"windows": [{"from": "07:00", "to": "19:00", "interval": 300}, {"from": "20:00", "to": "25:00",
                                                                                 "interval": 300}]}},
         'poll.windows[1].to: "25:00" is not a time from 00:00 to 23:59'),
        ({"poll": {"windows": [{"from": "07:00", "to": "19:00", "interval": 0}]}},
         "poll.windows[0].interval: must be a positive number of seconds"),
        ({"poll": {"windows": [{"from": "07:00"}]}},
         'poll.windows[0]: must have from, to and interval, like {"from": "07:00", "to": "19:00", "interval": 300}'),
        ({"poll": {"windows": "07-19"}},
         'poll.windows: must be a list like [{"from": "07:00", "to": "19:00", "interval": 300}]'),
        ({"poll": {"utc_offset": 900}}, "poll.utc_offset: must be minutes from -720 to 840"),
        ({"poll": {"debounce": -1}}, "poll.debounce: must be a number of seconds (0 or more)"),
        ([], "(config): must be an object {...}"),
    ]
    for cfg, message in cases:
        assert error_for(cfg) == message, (cfg, error_for(cfg))


def test_error_carries_key_and_sentence():
    with raises(ConfigError) as r:
        config.validate({"smtp": {"port": 0}})
    assert r.value.key == "smtp.port"
    assert r.value.sentence.startswith("must be")


def test_mask_hides_every_secret():
    shown = config.mask(config.validate(example()))
    text = json.dumps(shown)
    assert "..." not in text
    assert shown["relay"]["secret"] == "***"
    assert shown["smarthost"]["secret"] == "***"
    assert shown["users"]["alice"]["password"] == "***"
    assert shown["relay"]["user"] == "office"
    # an unset secret stays visibly unset
    assert config.mask(config.validate({}))["relay"]["secret"] == ""


def test_save_and_load_round_trip_atomically():
    d = tmpdir()
    path = d + "/config.json"
    config.save(path, example())
    assert config.load(path) == config.validate(example())
    config.save(path, config.with_key(config.load(path), "poll.interval", 60))
    assert config.load(path)["poll"]["interval"] == 60
    assert sorted(os.listdir(d)) == ["config.json"]


def test_save_refuses_a_bad_config_and_keeps_the_old():
    path = tmpdir() + "/config.json"
    config.save(path, example())
    with raises(ConfigError):
        config.save(path, {"smtp": {"port": "x"}})
    assert config.load(path)["smtp"]["port"] == 25


def test_load_missing_file_gives_defaults_and_bad_json_names_the_file():
    d = tmpdir()
    assert config.load(d + "/none.json") == config.validate({})
    with open(d + "/bad.json", "w") as f:
        f.write("{nope")
    with raises(ConfigError) as r:
        config.load(d + "/bad.json")
    assert "not valid JSON" in str(r.value)


def test_dotted_keys_for_the_console():
    cfg = config.validate(example())
    assert config.get(cfg, "smtp.port") == 25
    assert config.get(cfg, "catch_all.example.test") == "alice"
    cfg = config.with_key(cfg, "smtp.port", config.parse("smtp.port", "2525"))
    assert cfg["smtp"]["port"] == 2525
    cfg = config.with_key(cfg, "domains", config.parse("domains", "a.test, b.test"))
    assert cfg["domains"] == ["a.test", "b.test"]
    cfg = config.with_key(cfg, "relay.secret", config.parse("relay.secret", "123"))
    assert cfg["relay"]["secret"] == "123"  # a secret stays text even if it looks like a number
    cfg = config.with_key(cfg, "users.bob", {"password": "pw", "addresses": ["bob@a.test"]})
    cfg = config.with_key(cfg, "catch_all.a.test", "bob")
    assert cfg["catch_all"]["a.test"] == "bob"
    cfg = config.with_key(cfg, "forward.b.test", config.parse("forward.b.test", "10.0.0.5:25"))
    assert cfg["forward"] == {"b.test": "10.0.0.5:25"}
    cfg = config.with_key(cfg, "smtp.port", None)
    assert cfg["smtp"]["port"] == 25
    with raises(ConfigError) as r:
        config.with_key(cfg, "smtp.prot", 1)
    assert str(r.value) == "smtp.prot: unknown key"
    with raises(ConfigError):
        config.with_key(cfg, "smtp.max_size", config.parse("smtp.max_size", "lots"))


ALICE = {"password": "a", "addresses": ["alice@example.test"]}


def test_values_that_only_fail_together_name_their_key():
    cases = [
        ({"smtp": {"port": 2525}, "pop3": {"port": 2525}}, "pop3.port: is smtp.port too (2525); each listener needs its own"),
        ({"users": {"alice": ALICE, "bob": {"addresses": ["alice@example.test"]}}},
         "users.bob.addresses: alice@example.test is alice's address already"),
        ({"users": {"alice": ALICE}, "forward": {"alice": "127.0.0.1:notaport"}},
         'forward.alice: "127.0.0.1:notaport" is not host or host:port (port 1-65535)'),
        ({"users": {"alice": ALICE}, "forward": {"alice": "10.0.0.5:70000"}},
         'forward.alice: "10.0.0.5:70000" is not host or host:port (port 1-65535)'),
        ({"users": {"alice": ALICE}, "forward": {"carol": "10.0.0.5"}},
         "forward.carol: 'carol' is neither a user nor a domain of domains or of a user's address"),
        ({"network": {"gateway": "192.168.1.1"}}, "network.gateway: is only used with a static network.ip (none: DHCP)"),
        ({"network": {"ip": "192.168.1.20", "netmask": "255.255.255.0"}},
         "network.gateway: must be set with a static network.ip"),
        ({"network": {"ip": "192.168.1.20", "netmask": "255.0.255.0", "gateway": "192.168.1.1"}},
         "network.netmask: 255.0.255.0 is not a netmask like 255.255.255.0"),
        ({"network": {"ip": "192.168.1.20", "netmask": "255.255.255.0", "gateway": "10.0.0.1"}},
         "network.gateway: 10.0.0.1 is not on the subnet of network.ip 192.168.1.20/255.255.255.0"),
        ({"network": {"ip": "192.168.1.300"}}, 'network.ip: must be an IPv4 address like 192.168.1.20, or "" for DHCP'),
        ({"network": {"dns": "10.0.0.0/8"}}, 'network.dns: must be an IPv4 address like 192.168.1.20, or "" for DHCP'),
        ({"network": {"hostname": "front desk"}},
         "network.hostname: must be one name of letters, digits and '-' (at most 63), like odmrgw"),
        ({"network": {"hostname": "gw.example.test"}},
         "network.hostname: must be one name of letters, digits and '-' (at most 63), like odmrgw"),
    ]
    for cfg, message in cases:
        assert error_for(cfg) == message, (cfg, error_for(cfg))


def test_network_takes_dhcp_or_a_whole_static_address():
    assert config.validate({})["network"] == {"ip": "", "netmask": "", "gateway": "", "dns": "", "hostname": ""}
    static = {"ip": "192.168.1.20", "netmask": "255.255.255.0", "gateway": "192.168.1.1", "dns": "", "hostname": "office-gw"}
    assert config.validate({"network": static})["network"] == static
    forwards = {"alice": "10.0.0.5", "example.test": "10.0.0.6:2525"}
    assert config.validate({"users": {"alice": ALICE}, "forward": forwards})["forward"] == forwards


def test_files_the_config_names_are_looked_for():
    cfg = config.validate({"pop3": {"cert": "cert.der", "key": "key.der"}, "relay": {"ca": "ca.der"}})
    assert str(config.missing_file(cfg, lambda name: name != "key.der")) == "pop3.key: no file key.der on the box's flash"
    assert config.missing_file(cfg, lambda name: True) is None
