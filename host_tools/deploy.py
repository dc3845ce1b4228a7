"""`odmrgw deploy --port P [--board NAME]`: compile the firmware with mpy-cross
for the board's .mpy version and native architecture (the DATA scanner is
viper code), and copy only what changed, with mpremote.

On the box (paths relative to its working directory, "/" on the ESP32):
    boot.py, main.py          as source: MicroPython runs these by name
    board.mpy, pins.mpy       board/esp32/board.py and board/esp32/pins/NAME.py
    lib/gateway/**.mpy        firmware/gateway
    odmrgw.manifest           JSON {path: sha256} of what the last deploy wrote

On a board whose MicroPython has a romfs partition (docs/freezing.md), the
gateway goes into that partition as one ROMFS image instead of lib/gateway:
its bytecode then runs in place from flash and takes no heap (docs/heap.md).
"""
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from host_tools import mpy, serialport
from host_tools.device import Device

ESP32 = mpy.REPO / "board" / "esp32"
PINS = ESP32 / "pins"
MANIFEST = "odmrgw.manifest"
DEFAULT_BOARD = "devkitc_sd"
# The size of the board's first romfs partition, 0 for none: stock firmware
# has no vfs.rom_ioctl; rom_ioctl(1) counts the partitions and rom_ioctl(2, 0)
# maps the first, or is a negative errno (extmod/vfs_rom_ioctl.c).
ROM_PROBE = ("(lambda r: 0 if r is None or r(1) < 1 or isinstance(r(2, 0), int) else len(r(2, 0)))"
             "(getattr(__import__('vfs'), 'rom_ioctl', None))")
ROM = "romfs partition"  # the manifest's name for the image


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


def for_rom(files, rom_size):
    """(files to copy, ROMFS image or None, the image's size). The gateway
    goes into the romfs partition when the board has one it fits in,
    otherwise into lib/."""
    package = {path[len("lib/"):]: data for path, data in files.items() if path.startswith("lib/gateway/")}
    image = mpy.romfs(package)
    if len(image) > rom_size:
        return files, None, len(image)
    return {path: data for path, data in files.items() if not path.startswith("lib/gateway/")}, image, len(image)


def deploy(port, board=DEFAULT_BOARD, force=False, restart=True, say=print):
    """Returns the list of paths written."""
    with Device(port) as dev:
        march = board_march(dev.eval("__import__('sys').implementation._mpy"))
        rom_size = dev.eval(ROM_PROBE)
        old = {} if force else json.loads(dev.read(MANIFEST) or b"{}")
    files, image, size = for_rom(build(board, march), rom_size)
    if rom_size and image is None:
        say(f"the gateway ({size} bytes) does not fit the board's romfs partition ({rom_size} bytes): "
            "copying it to lib/ instead")
    new = {path: digest(data) for path, data in files.items()}
    if image is not None:
        new[ROM] = digest(image)
    elif ROM in old:
        image = mpy.romfs({})  # an emptied partition: old code there would shadow lib/
    rom_changed = image is not None and old.get(ROM) != new.get(ROM)
    if rom_changed:
        say(f"writing the romfs partition ({len(image)} of {rom_size} bytes)")
        put_rom(port, image)
    with Device(port) as dev:
        changed = [p for p in files if old.get(p) != new[p]]
        stale = [p for p in old if p not in new and p != ROM]
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
        if restart and (changed or stale or rom_changed):
            dev.restart()
    return changed + [ROM] * rom_changed


def put_rom(port, image):
    """`mpremote romfs deploy`, which writes a romfs partition block by block."""
    with tempfile.TemporaryDirectory(prefix="odmrgw-rom-") as tmp:
        path = Path(tmp) / "gateway.romfs"
        path.write_bytes(image)
        proc = subprocess.run([sys.executable, "-m", "mpremote", "connect", port, "resume", "romfs", "deploy", str(path)],
                              capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"odmrgw deploy: writing the romfs partition failed: {(proc.stdout + proc.stderr).strip()[-300:]}")


def run(args):
    with serialport.talking(args.port, "odmrgw deploy"):
        deploy(args.port, args.board, args.force, not args.no_restart)
    return 0
