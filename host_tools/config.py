"""`odmrgw config push|pull|set --port P`: the box's config.json on its flash.

The config is checked here with the firmware's own validator (gateway.config
imports on CPython) before anything is written, and written beside the old
file then renamed over it, so a cut cable leaves the old or the new config.
A CA named in relay.ca / smarthost.ca that is a PEM file on this computer is
converted to DER on the way (MicroPython's ssl takes DER as cadata) and
stored on the box as NAME.der.

When the config names no certificate for the listeners (smtp.cert,
pop3.cert), push gives the box one, so that STARTTLS and STLS work and
passwords never cross the LAN in clear: self-signed for the config's
hostname, or signed by a CA the user gives (--tls-ca, --tls-ca-key). It is
stored as DER (box-cert.der, box-key.der) and kept on later pushes, so mail
clients that trust it go on trusting it.
"""
import base64
import json
import os
import re
import sys
from pathlib import Path

from host_tools import mpy, serialport
from host_tools.device import Device

REMOTE = "config.json"
BOX_CERT, BOX_KEY = "box-cert.der", "box-key.der"
CERT_DAYS = 3650  # the box has no way to renew it by itself
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)


def gwconfig():
    if str(mpy.FIRMWARE) not in sys.path:
        sys.path.insert(0, str(mpy.FIRMWARE))
    from gateway import config

    return config


def add_parser(sub):
    p = sub.add_parser("config", help="push, pull or change the box's config")
    cmds = p.add_subparsers(dest="config_cmd", required=True)
    push = cmds.add_parser("push", help="check a local config file and write it to the box")
    push.add_argument("file")
    pull = cmds.add_parser("pull", help="print the box's config (secrets as ***), or save it to FILE")
    pull.add_argument("file", nargs="?")
    st = cmds.add_parser("set", help="change one key on the box, e.g. poll.interval 600")
    st.add_argument("key")
    st.add_argument("value", help="the new value; JSON for lists and objects, or a comma list")
    for c in (push, pull, st):
        c.add_argument("--port", required=True, help="serial port of the box (or the pty of `odmrgw sim --pty`)")
    for c in (push, st):
        c.add_argument("--no-restart", action="store_true", help="do not restart the box to apply it")
    push.add_argument("--tls-ca", help="PEM certificate of a CA to sign the box's new certificate (default: self-signed)")
    push.add_argument("--tls-ca-key", help="PEM private key of that CA")
    p.set_defaults(func=run)


def pem_to_der(text):
    """DER bytes of every certificate in a PEM text, back to back."""
    blocks = _PEM.findall(text)
    if not blocks:
        raise ValueError("no CERTIFICATE block")
    return b"".join(base64.b64decode("".join(b.split()), validate=True) for b in blocks)


def local_cas(cfg, base):
    """{name on the box: DER bytes} for CAs that are files here; rewrites the
    config to name them as stored on the box."""
    out = {}
    for section in ("relay", "smarthost"):
        name = (cfg.get(section) or {}).get("ca")
        if not name:
            continue
        path = base / name
        if not path.is_file():
            print(f"{section}.ca: {name} is not a file here; expecting it on the box already")
            continue
        data = path.read_bytes()
        if b"-----BEGIN" in data:
            try:
                data = pem_to_der(data.decode("ascii"))
            except ValueError as e:
                raise SystemExit(f"odmrgw config: {section}.ca: {path}: {e}")
        remote = Path(name).stem + ".der"
        out[remote] = data
        cfg[section]["ca"] = remote
    return out


def make_certificate(hostname, ca_cert=None, ca_key=None):
    """(certificate, private key) as DER for a listener of the box named
    hostname: EC P-256 (small and quick for mbedTLS on the ESP32), signed by
    the CA given as PEM bytes, else by itself."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    issuer, signer = name, key
    if ca_cert:
        ca = x509.load_pem_x509_certificate(ca_cert)
        issuer, signer = ca.subject, serialization.load_pem_private_key(ca_key, None)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(signer, hashes.SHA256())
    )
    der_key = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.DER), der_key


def _read_ca(ca_cert, ca_key):
    """The CA's PEM certificate and key as bytes, or (None, None)."""
    if not ca_cert and not ca_key:
        return None, None
    if not (ca_cert and ca_key):
        raise SystemExit("odmrgw config: --tls-ca and --tls-ca-key go together")
    try:
        pems = Path(ca_cert).read_bytes(), Path(ca_key).read_bytes()
    except OSError as e:
        raise SystemExit(f"odmrgw config: {e.filename}: {e.strerror}")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        x509.load_pem_x509_certificate(pems[0])
        serialization.load_pem_private_key(pems[1], None)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"odmrgw config: --tls-ca/--tls-ca-key: not a PEM certificate and unencrypted key: {e}")
    return pems


def box_certificate(cfg, remote, ca):
    """{name on the box: DER} for the listeners' certificate: nothing when
    the config names one, or the box already has the one an earlier push
    made (then kept, and named again); else a new one. Sets smtp.cert/key
    and pop3.cert/key in cfg to it."""
    if any((cfg.get(s) or {}).get("cert") or (cfg.get(s) or {}).get("key") for s in ("smtp", "pop3")):
        return {}
    for s in ("smtp", "pop3"):
        cfg.setdefault(s, {}).update(cert=BOX_CERT, key=BOX_KEY)
    if ((remote.get("smtp") or {}).get("cert"), (remote.get("smtp") or {}).get("key")) == (BOX_CERT, BOX_KEY):
        print(f"certificate: keeping the box's {BOX_CERT}")
        return {}
    hostname = cfg["hostname"]
    cert, key = make_certificate(hostname, *ca)
    import hashlib

    print(f"certificate: new for {hostname}, {'signed by your CA' if ca[0] else 'self-signed'}; SHA-256 fingerprint"
          f" {hashlib.sha256(cert).hexdigest()} (mail clients must trust it)")
    return {BOX_KEY: key, BOX_CERT: cert}


def write_atomically(dev, path, data):
    dev.write(path + ".tmp", data)
    dev.rename(path + ".tmp", path)


def read_remote(dev):
    data = dev.read(REMOTE)
    return json.loads(data) if data else {}


def push(port, file, restart=True, tls_ca=None, tls_ca_key=None):
    config = gwconfig()
    path = Path(file)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"odmrgw config: {file}: {e}")
    cas = local_cas(raw, path.parent)
    ca = _read_ca(tls_ca, tls_ca_key)
    try:
        cfg = config.validate(raw)
    except config.ConfigError as e:
        raise SystemExit(f"odmrgw config: {file}: {e}")
    with Device(port) as dev:
        try:
            remote = read_remote(dev)
        except ValueError:
            remote = {}  # a broken config on the box is replaced all the same
        tls = box_certificate(cfg, remote, ca)
        from gateway.config import missing_file

        missing = missing_file(cfg, lambda name: name in cas or name in tls or dev.exists(name))
        if missing:
            raise SystemExit(f"odmrgw config: {file}: {missing}; nothing was written")
        for name, der in cas.items():
            print(f"CA {name} ({len(der)} bytes DER)")
            write_atomically(dev, name, der)
        for name, der in tls.items():  # the key first: a cert never names a key that is not there
            write_atomically(dev, name, der)
        write_atomically(dev, REMOTE, json.dumps(cfg).encode())
        print(f"config written to the box ({REMOTE})")
        if restart:
            dev.restart()


def pull(port, file=None):
    config = gwconfig()
    with Device(port) as dev:
        cfg = read_remote(dev)
    if file:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the secrets
        with os.fdopen(fd, "w") as f:
            json.dump(cfg, f, indent=2)
        print(f"saved to {file} (with secrets; mode 600)")
    else:
        print(json.dumps(config.mask(config.validate(cfg)), indent=2))


def set_key(port, key, text, restart=True):
    config = gwconfig()
    with Device(port) as dev:
        try:
            cfg = config.with_key(config.validate(read_remote(dev)), key, config.parse(key, text))
        except config.ConfigError as e:
            raise SystemExit(f"odmrgw config: {e}")
        write_atomically(dev, REMOTE, json.dumps(cfg).encode())
        print(f"{key} = {json.dumps(config.get(config.mask(cfg), key))}")
        if restart:
            dev.restart()


def run(args):
    with serialport.talking(args.port, f"odmrgw config {args.config_cmd}"):
        if args.config_cmd == "push":
            push(args.port, args.file, not args.no_restart, args.tls_ca, args.tls_ca_key)
        elif args.config_cmd == "pull":
            pull(args.port, args.file)
        else:
            set_key(args.port, args.key, args.value, not args.no_restart)
    return 0
