"""`odmrgw demo` (what `make run` runs): boot the simulated board on a fresh
card image and show what it reports."""
from pathlib import Path

from host_tools import mpy
from host_tools.sd import SDTOOL

DEMO_DIR = mpy.REPO / "build" / "demo"


def add_parser(sub):
    p = sub.add_parser("demo", help="boot the simulated gateway on a fresh card and show its status")
    p.add_argument("--dir", default=str(DEMO_DIR), help="where the card image goes")
    p.add_argument("--once", action="store_true", help="exit after one run")
    p.set_defaults(func=run)


def run(args):
    workdir = Path(args.dir)
    workdir.mkdir(parents=True, exist_ok=True)
    image = workdir / "card.img"
    image.unlink(missing_ok=True)
    print(f"creating a fresh 64 MiB card image at {image}")
    if mpy.run(SDTOOL, "mkfs", image, 64 << 20).returncode:
        return 1
    print("booting the simulated board (micropython, 64 KiB heap):")
    return mpy.run(mpy.BOARD_UNIX / "main.py", "--sd", image).returncode
