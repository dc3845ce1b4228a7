# The gateway's configuration: one JSON file on the internal flash (LittleFS,
# which survives a power cut during a write; the SD card's FAT does not).
# load() validates it and fills in defaults; every other module reads its
# keys from the validated dict and may rely on their types.
#
# To add a key, add one line to _schema(): "name": (kind, default). "*" stands
# for any name (a user, a domain). Kinds are checked in _check_leaf().
import json
import os

from gateway import ipv4
from gateway.compat import drop_modules

_TLS_MODES = ("implicit", "starttls", "none")
_SECRETS = ("secret", "password")
MASK = "***"
_NUMBERS = {
    "int": (1, 1 << 40, "must be a positive integer"),
    "bytes": (0, 1 << 40, "must be a number of bytes (0 or more)"),
    "secs": (0, 1 << 40, "must be a number of seconds (0 or more)"),
    "minutes": (-720, 840, "must be minutes from -720 to 840"),
    "port": (1, 65535, "must be a port number (1-65535)"),
    "port_or_off": (0, 65535, "must be a port number (1-65535) or 0 (off)"),
    "sessions": (1, 16, "must be a number of sessions (1-16)"),
}


def _endpoint(port):
    # relay (ODMR, RFC 2645) and smarthost (submission) share their shape.
    return {
        "host": ("str", ""),
        "port": ("port", port),
        "tls": ("tls", "starttls"),
        "server_name": ("str", ""),  # name the certificate must carry; "" = host
        "ca": ("str", ""),  # DER file on the flash (odmrgw config push converts PEM)
        "user": ("str", ""),
        "secret": ("str", ""),
    }


def _schema():
    return {
        "hostname": ("str", "gateway"),
        # PLAIN, LOGIN and POP3 USER/PASS without TLS, for an old mail client
        # only: the password then crosses the LAN in clear.
        "clear_text_logins": ("bool", False),
        "listen": ("ip", "0.0.0.0"),  # address the SMTP and POP3 listeners bind to
        "domains": ("domains", []),
        "relay": _endpoint(366),
        "smarthost": _endpoint(587),
        "poll": {  # gateway.scheduler, gateway.outbound
            "interval": ("int", 900),
            "windows": ("windows", []),  # [{"from": "07:00", "to": "19:00", "interval": 300}], local time
            "utc_offset": ("minutes", 0),  # local time minus UTC, for the windows
            "debounce": ("secs", 30),  # wait after new outgoing mail, so a burst goes in one cycle
            "backoff_min": ("int", 60),  # first retry after a failed cycle ...
            "backoff_max": ("int", 3600),  # ... doubling up to this
            "bounce_after": ("int", 5 * 86400),  # outgoing mail undeliverable this long is bounced
        },
        "smtp": {
            "port": ("port", 25),
            "max_size": ("int", 10240000),
            "allow": ("nets", ["192.168.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "127.0.0.0/8"]),
            # Office PCs at once; more get 421 4.3.2 before their session
            # starts. The default fits the heap budget (docs/heap.md).
            "sessions": ("sessions", 4),
            "cert": ("str", ""),  # DER files on the flash, as pop3's; both set = STARTTLS offered
            "key": ("str", ""),
        },
        "pop3": {
            "port": ("port", 110),
            "cert": ("str", ""),  # DER files on the flash (MicroPython's ssl takes no PEM); both set = STLS offered
            "key": ("str", ""),
            "sessions": ("sessions", 4),  # mail clients at once; more get -ERR [SYS/TEMP]
        },
        "imap": {  # gateway.imap, docs/imap.md; STARTTLS with pop3's cert and key
            # 0 = off, the default: its code and sessions need heap that a
            # plain ESP32-WROOM does not have beside the rest (docs/heap.md).
            "port": ("port_or_off", 0),
            "sessions": ("sessions", 2),  # a phone and a PC; more get * BYE [UNAVAILABLE]
        },
        "wifi": {  # ESP32 boards without Ethernet
            "ssid": ("str", ""),
            "password": ("str", ""),
        },
        "ntp": {
            "host": ("str", "pool.ntp.org"),
        },
        "network": {  # Wi-Fi or Ethernet; every address "" = DHCP (gateway.configcheck)
            "ip": ("addr", ""),  # a static address, e.g. 192.168.1.20
            "netmask": ("addr", ""),
            "gateway": ("addr", ""),
            "dns": ("addr", ""),  # "" with a static ip: the gateway
            "hostname": ("label", ""),  # the box's name on the LAN (DHCP, mDNS NAME.local); "" = odmrgw
        },
        "users": {
            "*": {
                "password": ("str", ""),
                "addresses": ("addresses", []),
                "quota": ("bytes", 0),  # mailbox limit in bytes; 0 = none
            },
        },
        "catch_all": {"*": ("user", "")},
        "forward": {"*": ("str", "")},  # user or domain -> "host[:port]" of an internal SMTP host
    }


class ConfigError(ValueError):
    """A bad config value: .key names it, str(e) is "key: sentence"."""

    def __init__(self, key, sentence):
        super().__init__("%s: %s" % (key, sentence))
        self.key = key
        self.sentence = sentence


def _join(path, key):
    return path + "." + key if path else key


def _is_str_list(value):
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _check_leaf(kind, key, value):
    """Returns the value (a fresh copy for lists) or raises ConfigError."""
    if kind == "str" or kind == "user":
        if not isinstance(value, str):
            raise ConfigError(key, "must be a string")
    elif kind in _NUMBERS:
        low, top, what = _NUMBERS[kind]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= top:
            raise ConfigError(key, what)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(key, "must be true or false")
    elif kind == "tls":
        if value not in _TLS_MODES:
            raise ConfigError(key, "must be one of " + ", ".join(_TLS_MODES))
    elif kind == "domains" or kind == "addresses":
        if not _is_str_list(value):
            raise ConfigError(key, "must be a list of names")
        for v in value:
            at = v.find("@")
            if (kind == "addresses") != (0 < at < len(v) - 1) or " " in v:
                raise ConfigError(key, "%r is not %s" % (v, "an address (user@domain)" if kind == "addresses" else "a domain"))
        value = [v.lower() for v in value]
    elif kind == "ip":
        if not ipv4.is_address(value):
            raise ConfigError(key, "must be an IPv4 address like 0.0.0.0")
    elif kind == "addr" or kind == "label":
        _raise(_checks().network_leaf(kind, key, value))
    elif kind == "windows":
        _raise(_checks().windows(key, value))  # names the entry and the field
        value = [dict(w) for w in value]
    elif kind == "nets":
        if not _is_str_list(value) or not all(ipv4.is_network(v) for v in value):
            raise ConfigError(key, "must be a list of networks like 192.168.0.0/16")
        value = list(value)
    else:
        raise ConfigError(key, "has an unknown kind %r" % kind)
    return value


def _check(schema, value, path):
    """Validated copy of value; missing keys get their defaults."""
    if isinstance(schema, tuple):
        return _check_leaf(schema[0], path, value)
    if not isinstance(value, dict):
        raise ConfigError(path or "(config)", "must be an object {...}")
    out = {}
    for key in value:
        if key not in schema and "*" not in schema:
            raise ConfigError(_join(path, key), "unknown key")
        out[key] = _check(schema.get(key) or schema["*"], value[key], _join(path, key))
    for key in schema:
        if key != "*" and key not in out:
            sub = schema[key]
            out[key] = _check(sub, {} if isinstance(sub, dict) else _copy(sub[1]), _join(path, key))
    return out


def _copy(value):
    return list(value) if isinstance(value, list) else value


def validate(cfg):
    """The checked config with defaults filled in; raises ConfigError."""
    try:
        out = _check(_schema(), cfg, "")
        for domain, user in out["catch_all"].items():
            if user not in out["users"]:
                raise ConfigError("catch_all." + domain, "no such user %r" % user)
        _raise(_checks().across(out))
        return out
    finally:
        drop_modules(("gateway.configcheck",))


def _checks():
    # The checks across keys, of the network keys and of the poll windows
    # live in their own module, loaded while a config is validated and
    # dropped afterwards. They say what is wrong; this module raises.
    from gateway import configcheck

    return configcheck


def _raise(problem):
    """problem: None, or the (key, sentence) a check in configcheck found."""
    if problem:
        raise ConfigError(*problem)


def missing_file(cfg, exists=None):
    """ConfigError for the first file key naming a file that is not there
    (on this board's flash, or as exists(name) says), or None. Checked where
    the flash is at hand (the box at start, `odmrgw config push` on the
    box), not by validate()."""
    problem = _checks().missing_file(cfg, exists)
    drop_modules(("gateway.configcheck",))
    return ConfigError(*problem) if problem else None


def load(path):
    """Reads and validates the config file; a missing file means all defaults."""
    try:
        f = open(path)
    except OSError:
        return validate({})
    try:
        cfg = json.load(f)
    except ValueError:
        raise ConfigError("(file)", "%s is not valid JSON" % path)
    finally:
        f.close()
    return validate(cfg)


def save(path, cfg):
    """Writes a validated config. The new file is written beside the old one
    and renamed over it, which LittleFS (and a POSIX file system) does
    atomically: after a power cut there is either the old or the new file."""
    cfg = validate(cfg)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f)
    os.rename(tmp, path)
    return cfg


def mask(cfg):
    """A copy fit to show: every secret or password that is set reads ***."""
    if isinstance(cfg, dict):
        return {k: (MASK if k in _SECRETS and v else mask(v)) for k, v in cfg.items()}
    return _copy(cfg)


# Dotted keys for the console: "smtp.port", "users.alice.password",
# "catch_all.example.test" (a "*" leaf takes the rest of the key, dots and all).
def _walk(key):
    """(schema node, parts) for a dotted key, or ConfigError."""
    node = _schema()
    parts = []
    rest = key
    while rest:
        if not isinstance(node, dict):
            raise ConfigError(key, "unknown key")
        head, _, tail = rest.partition(".")
        if head in node:
            node = node[head]
        elif "*" in node:
            node = node["*"]
            if isinstance(node, tuple):
                head, tail = rest, ""
        else:
            raise ConfigError(key, "unknown key")
        parts.append(head)
        rest = tail
    return node, parts


def get(cfg, key):
    """The value under a dotted key ("" = the whole config); KeyError if unset."""
    _, parts = _walk(key)
    for p in parts:
        cfg = cfg[p]
    return cfg


def parse(key, text):
    """Turns console text into a value for key: JSON where JSON parses
    (numbers, lists, objects), otherwise the text itself; a comma list for
    list kinds."""
    node, _ = _walk(key)
    if isinstance(node, tuple) and node[0] in ("str", "user", "tls"):
        return text
    try:
        return json.loads(text)
    except ValueError:
        if isinstance(node, tuple) and isinstance(node[1], list):
            return [v.strip() for v in text.split(",") if v.strip()]
        return text


def with_key(cfg, key, value):
    """A validated copy of cfg with key set (value None: removed, so its
    default applies again). The original is untouched if it fails."""
    _, parts = _walk(key)
    if not parts:
        raise ConfigError("(config)", "name a key")
    new = json.loads(json.dumps(cfg))
    node = new
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    return validate(new)
