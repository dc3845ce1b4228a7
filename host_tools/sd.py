"""`odmrgw sd ...`: read and write a card image without root or a loop mount."""
from host_tools import mpy

SDTOOL = mpy.BOARD_UNIX / "sdtool.py"
# export compiles the firmware's mailbox module from source: more heap.
EXPORT_HEAP = "256k"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text):
    text = text.strip().upper().rstrip("B")
    unit = text[-1:] if text[-1:] in _UNITS else ""
    number = text[: len(text) - len(unit)]
    if not number.isdigit():
        raise ValueError(f"not a size: {text!r} (try 64M)")
    return int(number) * _UNITS[unit]


def add_parser(sub):
    p = sub.add_parser("sd", help="read and write an SD card image")
    cmds = p.add_subparsers(dest="sd_cmd", required=True)
    mk = cmds.add_parser("mkfs", help="create and FAT-format a card image")
    mk.add_argument("image")
    mk.add_argument("--size", default="64M", help="image size, e.g. 64M (default)")
    ls = cmds.add_parser("ls", help="list a directory on the card")
    ls.add_argument("image")
    ls.add_argument("path", nargs="?", default="/")
    cat = cmds.add_parser("cat", help="print a file from the card")
    cat.add_argument("image")
    cat.add_argument("path")
    for name, what in (("put", "copy a host file onto the card"), ("get", "copy a card file to the host")):
        c = cmds.add_parser(name, help=what)
        c.add_argument("image")
        c.add_argument("src")
        c.add_argument("dest")
    df = cmds.add_parser("df", help="card size and free space")
    df.add_argument("image")
    ex = cmds.add_parser("export", help="every user's mailbox as a Maildir under DEST/<user>/")
    ex.add_argument("image")
    ex.add_argument("dest")
    p.set_defaults(func=run)


def run(args):
    if args.sd_cmd == "mkfs":
        try:
            size = parse_size(args.size)
        except ValueError as e:
            raise SystemExit(f"odmrgw sd mkfs: {e}")
        extra = [size]
    else:
        extra = [getattr(args, k) for k in ("path", "src", "dest") if hasattr(args, k)]
    return sdtool(args.sd_cmd, args.image, *extra).returncode


def sdtool(cmd, image, *args, **kw):
    """board/unix/sdtool.py on micropython; kw as for subprocess.run."""
    heap = EXPORT_HEAP if cmd == "export" else mpy.DEFAULT_HEAP
    return mpy.run(SDTOOL, cmd, image, *args, heap=heap, **kw)
