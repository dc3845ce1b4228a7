"""Running board/unix code on the real micropython executable.

The host tools never import firmware into CPython to touch a card image: they
run it on MicroPython, the way the box itself would.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIRMWARE = REPO / "firmware"
BOARD_UNIX = REPO / "board" / "unix"
DEFAULT_HEAP = "64k"


def micropython_exe():
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if not found:
        raise SystemExit("odmrgw: the micropython executable is missing; run `make venv`")
    return found


def env(extra_paths=()):
    """Environment for micropython: firmware and the unix board on its path."""
    paths = [str(p) for p in extra_paths] + [str(BOARD_UNIX), str(FIRMWARE), ".frozen"]
    e = dict(os.environ)
    e["MICROPYPATH"] = os.pathsep.join(paths)
    return e


def command(script, *args, heap=DEFAULT_HEAP):
    return [micropython_exe(), "-X", f"heapsize={heap}", str(script), *map(str, args)]


def run(script, *args, heap=DEFAULT_HEAP, extra_paths=(), **kw):
    return subprocess.run(command(script, *args, heap=heap), env=env(extra_paths), **kw)


def popen(script, *args, heap=DEFAULT_HEAP, extra_paths=(), **kw):
    return subprocess.Popen(command(script, *args, heap=heap), env=env(extra_paths), **kw)


# sys.implementation._mpy >> 10 is the native architecture a port runs
# (py/persistentcode.h): mpy-cross must emit viper code for that one.
MARCHES = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp", "xtensa",
           "xtensawin", "rv32imc", "rv64imc")


def mpy_cross_exe():
    return str(Path(sys.executable).parent / "mpy-cross")


def cross_compile(src, dst, march="host", name=None):
    """One file through mpy-cross; march names the target's native code
    ("host" is this machine, which the unix port runs on). Returns the
    CompletedProcess, output captured."""
    cmd = [mpy_cross_exe(), f"-march={march}", "-o", str(dst)]
    if name:
        cmd += ["-s", name]
    return subprocess.run(cmd + [str(src)], capture_output=True, text=True)


def gateway_sources():
    """[(source, its .mpy path relative to the firmware root)] of every
    module in firmware/gateway, sorted."""
    return [(p, p.relative_to(FIRMWARE).with_suffix(".mpy")) for p in sorted((FIRMWARE / "gateway").rglob("*.py"))]


def compile_firmware(out, board_scripts=()):
    """firmware/gateway (and the named board/unix scripts) as .mpy files in
    `out`, as deployed to the box: compiling at import time costs far more
    heap than loading bytecode."""
    out = Path(out)
    srcs = gateway_sources() + [(BOARD_UNIX / name, Path(name).with_suffix(".mpy")) for name in board_scripts]
    for src, rel in srcs:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        proc = cross_compile(src, dst)
        if proc.returncode:
            raise RuntimeError(f"mpy-cross failed on {src}:\n{proc.stderr}")
    return out


def free_port(host="127.0.0.1"):
    """A loopback port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
