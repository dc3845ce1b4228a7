"""The relay's TOML config: load, check every key, fill defaults.

Relative paths (queue, tls.cert, tls.key) are taken relative to the config
file's directory, so a systemd unit and a test run read the same file the
same way whatever their working directory."""
import re
import socket
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CONTROL = re.compile(r"[\x00-\x20\x7f]")

# [limits] keys: name -> (default, converter). Documented in docs/relay.md.
LIMITS = {
    "max_size": (10240000, "int"),          # bytes per message (SIZE, 552 above it)
    "max_recipients": (1000, "int"),        # per transaction (452 beyond)
    "expire_after": (5 * 86400, "duration"),  # queued longer than this -> DSN to the sender
    "expire_check": (60, "duration"),       # how often the queue is scanned for expired mail
    "timeout": (300, "duration"),           # idle time allowed between a peer's commands/replies
    "turn_timeout": (600, "duration"),      # after the turn: wait this long for the customer's replies
    "auth_fail_delay": (1.0, "float"),      # seconds before answering a failed AUTH
    "auth_max_failures": (5, "int"),        # failed logins per IP within auth_block ...
    "auth_block": (600, "duration"),        # ... before that IP gets 421 for this long
    "max_sessions": (32, "int"),            # concurrent ODMR sessions
    "bounces_per_sender": (5, "int"),       # bounces to one outside sender within bounce_window ...
    "bounce_window": (3600, "duration"),    # ... beyond which they are logged, not sent (backscatter)
}


class ConfigError(Exception):
    def __init__(self, key, sentence):
        super().__init__(f"{key}: {sentence}")
        self.key = key


@dataclass
class Account:
    user: str
    secret: str = field(repr=False)
    domains: list
    # Addresses taken for this account's domains, lower-cased; "@domain" takes
    # every address of that domain. None: every address of every domain.
    recipients: set | None = None

    def accepts(self, address):
        address = address.lower()
        dom = domain_of(address)
        if dom not in self.domains:
            return False
        return self.recipients is None or address in self.recipients or "@" + dom in self.recipients


@dataclass
class Config:
    path: Path
    hostname: str
    queue: Path
    listen: dict            # name -> (host, port) for smtp, odmr, odmr_tls, submission
    cert: Path | None
    key: Path | None
    accounts: dict          # user -> Account
    next_hop: tuple | None
    retry_interval: float
    limits: dict

    @property
    def held_domains(self):
        return {d for a in self.accounts.values() for d in a.domains}

    @cached_property
    def _accounts_by_domain(self):
        by_domain = {}
        for a in self.accounts.values():
            for d in a.domains:
                by_domain.setdefault(d, []).append(a)
        return by_domain

    def knows(self, address):
        """Whether some account takes mail for `address` (its domain held,
        and on the account's recipient list when it has one)."""
        return any(a.accepts(address) for a in self._accounts_by_domain.get(domain_of(address), ()))

    def tls_context(self):
        """Server-side context for STARTTLS and implicit TLS, or None."""
        if not self.cert:
            return None
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as e:  # says "PEM lib (_ssl.c:3905)" and no file name
            raise ConfigError("tls", f"{self.cert} and {self.key} are not a PEM certificate and its key ({e.reason})")
        return ctx


def valid_domain(name):
    return bool(_DOMAIN.match(name))


def domain_of(address):
    return address.rpartition("@")[2].lower()


def parse_hostport(key, text):
    if not isinstance(text, str):
        raise ConfigError(key, "must be a string like \"127.0.0.1:2525\"")
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise ConfigError(key, f"{text!r} is not HOST:PORT (e.g. \"127.0.0.1:2525\")")
    if int(port) > 65535:
        raise ConfigError(key, f"port {port} is out of range (0-65535)")
    return host, int(port)


def parse_duration(key, value):
    """Seconds as a number, or a string with a unit: "90s", "30m", "12h", "5d"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2) or "s"]
    raise ConfigError(key, f"{value!r} is not a duration (seconds, or e.g. \"5d\", \"12h\")")


def _convert(key, value, kind):
    if kind == "duration":
        return parse_duration(key, value)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    if kind == "int" and not (ok and int(value) == value):
        raise ConfigError(key, f"{value!r} is not a whole number")
    if not ok:
        raise ConfigError(key, f"{value!r} is not a number >= 0")
    return int(value) if kind == "int" else float(value)


def _path(base, key, value):
    if not isinstance(value, str) or not value:
        raise ConfigError(key, "must be a path")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _reject_unknown(prefix, table, known):
    unknown = set(table) - known
    if unknown:
        raise ConfigError(prefix + sorted(unknown)[0], "unknown key")


def _accounts(raw):
    if not isinstance(raw, list) or not raw:
        raise ConfigError("account", "at least one [[account]] with user, secret and domains is needed")
    accounts = {}
    for i, a in enumerate(raw):
        where = f"account[{i}]"
        if not isinstance(a, dict):
            raise ConfigError(where, "must be a table")
        _reject_unknown(where + ".", a, {"user", "secret", "domains", "recipients"})
        user, secret, domains = a.get("user"), a.get("secret"), a.get("domains")
        if not isinstance(user, str) or not user or any(c.isspace() for c in user):
            raise ConfigError(f"{where}.user", "must be a non-empty name without spaces")
        if user in accounts:
            raise ConfigError(f"{where}.user", f"{user!r} appears twice")
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"{where}.secret", "must be a non-empty string")
        if not isinstance(domains, list) or not domains:
            raise ConfigError(f"{where}.domains", "must be a non-empty list of domain names")
        clean = []
        for d in domains:
            if not isinstance(d, str) or not valid_domain(d.lower()):
                raise ConfigError(f"{where}.domains", f"{d!r} is not a domain name")
            clean.append(d.lower())
        recipients = _recipients(f"{where}.recipients", a["recipients"], clean) if "recipients" in a else None
        accounts[user] = Account(user, secret, clean, recipients)
    return accounts


def _recipients(key, raw, domains):
    if not isinstance(raw, list) or not raw:
        raise ConfigError(key, "must be a non-empty list of addresses (\"@domain\" takes a whole domain)")
    out = set()
    for r in raw:
        local, at, dom = r.lower().rpartition("@") if isinstance(r, str) else ("", "", "")
        if not at or len(local) > 64 or not valid_domain(dom) or _CONTROL.search(local) or "@" in local:
            raise ConfigError(key, f"{r!r} is not an address (or \"@domain\")")
        if dom not in domains:
            raise ConfigError(key, f"{r!r} is not in this account's domains")
        out.add(f"{local}@{dom}")
    return out


def load(path):
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror}")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path} is not valid TOML: {e}")
    return from_dict(raw, path)


def from_dict(raw, path):
    base = path.parent
    _reject_unknown("", raw, {"hostname", "queue", "listen", "tls", "account", "outbound", "limits"})
    hostname = raw.get("hostname") or socket.getfqdn()
    if not isinstance(hostname, str) or not valid_domain(hostname.lower()):
        raise ConfigError("hostname", f"{hostname!r} is not a host name")
    if "queue" not in raw:
        raise ConfigError("queue", "the queue directory is required")
    queue = _path(base, "queue", raw["queue"])

    listen_raw = raw.get("listen", {})
    if not isinstance(listen_raw, dict):
        raise ConfigError("listen", "must be a table")
    listen = {}
    for name, value in listen_raw.items():
        if name not in ("smtp", "odmr", "odmr_tls", "submission"):
            raise ConfigError(f"listen.{name}", "unknown listener (smtp, odmr, odmr_tls, submission)")
        listen[name] = parse_hostport(f"listen.{name}", value)
    if not listen:
        raise ConfigError("listen", "no listener configured")

    tls = raw.get("tls", {})
    cert = key = None
    if tls:
        if set(tls) - {"cert", "key"} or "cert" not in tls or "key" not in tls:
            raise ConfigError("tls", "needs exactly cert and key")
        cert, key = _path(base, "tls.cert", tls["cert"]), _path(base, "tls.key", tls["key"])
        for k, p in (("tls.cert", cert), ("tls.key", key)):
            if not p.is_file():
                raise ConfigError(k, f"{p} does not exist")
    if "odmr_tls" in listen and not cert:
        raise ConfigError("listen.odmr_tls", "implicit TLS needs [tls] cert and key")

    outbound = raw.get("outbound", {})
    _reject_unknown("outbound.", outbound, {"next_hop", "retry_interval"})
    next_hop = parse_hostport("outbound.next_hop", outbound["next_hop"]) if outbound.get("next_hop") else None
    retry = parse_duration("outbound.retry_interval", outbound.get("retry_interval", 300))

    limits_raw = raw.get("limits", {})
    _reject_unknown("limits.", limits_raw, set(LIMITS))
    limits = {k: _convert(f"limits.{k}", limits_raw.get(k, d), kind) for k, (d, kind) in LIMITS.items()}

    cfg = Config(path, hostname.lower(), queue, listen, cert, key, _accounts(raw.get("account")),
                 next_hop, retry, limits)
    cfg.tls_context()  # a bad certificate is named at load, not at the first listener
    return cfg
