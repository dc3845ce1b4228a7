"""`odmrgw config push|pull|set --port P`: the box's config.json on its flash.

The config is checked here with the firmware's own validator (gateway.config
imports on CPython) before anything is written, and written beside the old
file then renamed over it, so a cut cable leaves the old or the new config.
A CA named in relay.ca / smarthost.ca that is a PEM file on this computer is
converted to DER on the way (MicroPython's ssl takes DER as cadata) and
stored on the box as NAME.der.
"""
import base64
import json
import os
import re
import sys
from pathlib import Path

from host_tools import mpy
from host_tools.deploy import Device

REMOTE = "config.json"
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


def write_atomically(dev, path, data):
    dev.write(path + ".tmp", data)
    dev.t.exec("import os\nos.rename(%r, %r)" % (path + ".tmp", path))


def read_remote(dev):
    data = dev.read(REMOTE)
    return json.loads(data) if data else {}


def push(port, file, restart=True):
    config = gwconfig()
    path = Path(file)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"odmrgw config: {file}: {e}")
    cas = local_cas(raw, path.parent)
    try:
        cfg = config.validate(raw)
    except config.ConfigError as e:
        raise SystemExit(f"odmrgw config: {file}: {e}")
    with Device(port) as dev:
        for name, der in cas.items():
            print(f"CA {name} ({len(der)} bytes DER)")
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
    if args.config_cmd == "push":
        push(args.port, args.file, not args.no_restart)
    elif args.config_cmd == "pull":
        pull(args.port, args.file)
    else:
        set_key(args.port, args.key, args.value, not args.no_restart)
    return 0
