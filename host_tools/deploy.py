"""`odmrgw deploy --port P [--board NAME]`: compile the firmware with mpy-cross
for the board's .mpy version and native architecture (the DATA scanner is
viper code), and copy only what changed, with mpremote.

On the box (paths relative to its working directory, "/" on the ESP32):
    boot.py, main.py          as source: MicroPython runs these by name
    board.mpy, pins.mpy       board/esp32/board.py and board/esp32/pins/NAME.py
    lib/gateway/**.mpy        firmware/gateway
    odmrgw.manifest           JSON {path: sha256} of what the last deploy wrote
"""
import hashlib
import json
import subprocess
import tempfile
from pathlib import Path

from host_tools import mpy, serialport
from host_tools.device import Device

ESP32 = mpy.REPO / "board" / "esp32"
PINS = ESP32 / "pins"
MANIFEST = "odmrgw.manifest"
DEFAULT_BOARD = "devkitc_sd"


def add_parser(sub):
    p = sub.add_parser("deploy", help="compile the firmware to .mpy and copy what changed to the box")
    p.add_argument("--port", required=True, help="serial port of the box (or the pty of `odmrgw sim --pty`)")
    p.add_argument("--board", default=DEFAULT_BOARD, choices=boards(), help=f"pin file (default {DEFAULT_BOARD})")
    p.add_argument("--force", action="store_true", help="copy every file, whatever the manifest says")
    p.add_argument("--no-restart", action="store_true", help="leave the box at the REPL afterwards")
    p.set_defaults(func=run)


def boards():
    return sorted(p.stem for p in PINS.glob("*.py"))


def mpy_cross_version():
    """(major, minor) of the .mpy files our mpy-cross writes, e.g. (6, 3)."""
    out = subprocess.run([mpy.mpy_cross_exe(), "--version"], capture_output=True, text=True, check=True).stdout
    major, minor = out.rsplit("mpy v", 1)[1].split(".")[:2]
    return int(major), int(minor)


def board_march(device_mpy):
    """sys.implementation._mpy packs the version (low byte), the sub-version
    (bits 8-9) and the native architecture (bits 10+). Returns the -march
    name for the box, once its version matches our mpy-cross."""
    board = (device_mpy & 0xFF, (device_mpy >> 8) & 3)
    ours = mpy_cross_version()
    if board != ours:
        raise SystemExit(
            "odmrgw deploy: the box loads .mpy v%d.%d but mpy-cross here writes v%d.%d; flash a MicroPython "
            "release that matches (odmrgw flash) or install the matching mpy-cross" % (board + ours)
        )
    arch = device_mpy >> 10
    if not 0 < arch < len(mpy.MARCHES):
        raise SystemExit("odmrgw deploy: the box runs no native code (architecture %d); this firmware needs it" % arch)
    return mpy.MARCHES[arch]


def plan(board):
    """[(source, path on the box, compile?)] for a board's pin file."""
    files = [(ESP32 / "boot.py", "boot.py", False), (ESP32 / "main.py", "main.py", False)]
    files.append((ESP32 / "board.py", "board.mpy", True))
    files.append((PINS / f"{board}.py", "pins.mpy", True))
    for src, rel in mpy.gateway_sources():
        files.append((src, "lib/" + rel.as_posix(), True))
    return files


def build(board, march):
    """Compiles the plan; returns {path on the box: bytes}. Each run compiles
    in its own scratch directory, so two deploys never share files."""
    with tempfile.TemporaryDirectory(prefix="odmrgw-deploy-") as out:
        return _compile(board, march, Path(out))


def _compile(board, march, out):
    built = {}
    for src, dest, compile_it in plan(board):
        if compile_it:
            target = out / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            name = src.relative_to(mpy.REPO).as_posix()
            proc = mpy.cross_compile(src, target, march, name)
            if proc.returncode:
                raise SystemExit(f"odmrgw deploy: mpy-cross failed on {name}:\n{proc.stderr}")
            built[dest] = target.read_bytes()
        else:
            built[dest] = src.read_bytes()
    return built


def digest(data):
    return hashlib.sha256(data).hexdigest()[:32]


def deploy(port, board=DEFAULT_BOARD, force=False, restart=True, say=print):
    """Returns the list of paths written."""
    with Device(port) as dev:
        march = board_march(dev.eval("__import__('sys').implementation._mpy"))
        files = build(board, march)
        old = {} if force else json.loads(dev.read(MANIFEST) or b"{}")
        new = {path: digest(data) for path, data in files.items()}
        changed = [p for p in files if old.get(p) != new[p]]
        stale = [p for p in old if p not in new]
        say(f"{len(files)} files for board {board}: {len(changed)} changed, {len(files) - len(changed)} unchanged")
        made = set()
        for i, path in enumerate(changed, 1):
            folder = path.rpartition("/")[0]
            if folder and folder not in made:
                dev.makedirs(folder)
                made.add(folder)
            say(f"[{i}/{len(changed)}] {path} ({len(files[path])} bytes)")
            dev.write(path, files[path])
        for path in stale:
            say(f"removing {path}")
            dev.remove(path)
        dev.write(MANIFEST, json.dumps(new, indent=0, sort_keys=True).encode())
        if restart and (changed or stale):
            dev.restart()
    return changed


def run(args):
    with serialport.talking(args.port, "odmrgw deploy"):
        deploy(args.port, args.board, args.force, not args.no_restart)
    return 0
