"""`odmrgw sd ...`: read and write a card image without root or a loop mount.
Commands that write the card hold its lock (host_tools.cardlock), so they
refuse an image a simulated board is using."""
import os

from host_tools import mpy
from host_tools.cardlock import CardLock

SDTOOL = mpy.BOARD_UNIX / "sdtool.py"
# export compiles the firmware's mailbox module from source: more heap.
EXPORT_HEAP = "256k"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
WRITES = ("mkfs", "put")
# A FAT boot sector (or the MBR of a whole card) ends in 55 AA.
_BOOT_SIGNATURE = (510, b"\x55\xaa")


def holds_filesystem(path):
    """True if the file starts with a boot sector: mkfs would wipe what it holds."""
    offset, sig = _BOOT_SIGNATURE
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(len(sig)) == sig


def image_problem(path):
    """One sentence on why `path` cannot be a card, or None."""
    if not os.path.exists(path):
        return f"{path}: no such card image (odmrgw sd mkfs {path} makes one)"
    if not os.path.isfile(path):
        return f"{path}: not a card image file"
    try:
        if not holds_filesystem(path):
            return f"{path}: not a FAT image (odmrgw sd mkfs makes one)"
    except OSError as e:
        return f"{path}: {e.strerror}"
    return None


def parse_size(text):
    size = text.strip().upper().rstrip("B")
    unit = size[-1:] if size[-1:] in _UNITS else ""
    number = size[: len(size) - len(unit)]
    if not number.isdigit():
        raise ValueError(f"--size {text}: not a size (try 64M)")
    return int(number) * _UNITS[unit]


def add_parser(sub):
    p = sub.add_parser("sd", help="read and write an SD card image")
    cmds = p.add_subparsers(dest="sd_cmd", required=True)
    mk = cmds.add_parser("mkfs", help="create and FAT-format a card image")
    mk.add_argument("image")
    mk.add_argument("--size", default="64M", help="image size, e.g. 64M (default)")
    mk.add_argument("--force", action="store_true", help="replace an existing image (its mail is lost)")
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


def check_mkfs(image, force):
    """Refuses to format over anything that is there, unless forced: the
    image may hold the only copy of someone's mail."""
    if os.path.isdir(image):
        raise SystemExit(f"odmrgw sd mkfs: {image} is a directory")
    folder = os.path.dirname(os.path.abspath(image))
    if not os.path.isdir(folder):
        raise SystemExit(f"odmrgw sd mkfs: {folder}: no such directory")
    if force or not os.path.exists(image) or not os.path.getsize(image):
        return
    what = "holds a FAT filesystem" if holds_filesystem(image) else "exists"
    raise SystemExit(f"odmrgw sd mkfs: {image} {what}; --force formats it anyway (everything on it is lost)")


def run(args):
    if args.sd_cmd == "mkfs":
        try:
            size = parse_size(args.size)
        except ValueError as e:
            raise SystemExit(f"odmrgw sd mkfs: {e}")
        check_mkfs(args.image, args.force)
        extra = [size]
    else:
        problem = image_problem(args.image)
        if problem:
            raise SystemExit(f"odmrgw sd {args.sd_cmd}: {problem}")
        extra = [getattr(args, k) for k in ("path", "src", "dest") if hasattr(args, k)]
    if args.sd_cmd not in WRITES:
        return sdtool(args.sd_cmd, args.image, *extra).returncode
    with CardLock(args.image, f"odmrgw sd {args.sd_cmd}"):
        if args.sd_cmd == "mkfs":
            return mkfs(args.image, size)
        return sdtool(args.sd_cmd, args.image, *extra).returncode


def mkfs(image, size):
    """Formats beside the image and renames over it once done, so a failure
    leaves what was there (or nothing), never an empty or half-made image."""
    tmp = f"{image}.mkfs"
    try:
        proc = sdtool("mkfs", tmp, size, capture_output=True, text=True)
        if proc.returncode:
            why = proc.stderr.strip().removeprefix("odmrgw sd: ")
            raise SystemExit(f"odmrgw sd mkfs: {image}: {why}")
        os.replace(tmp, image)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"made {image}:")
    return sdtool("df", image).returncode


def sdtool(cmd, image, *args, **kw):
    """board/unix/sdtool.py on micropython; kw as for subprocess.run."""
    heap = EXPORT_HEAP if cmd == "export" else mpy.DEFAULT_HEAP
    return mpy.run(SDTOOL, cmd, image, *args, heap=heap, **kw)
