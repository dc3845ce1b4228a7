# Card-image access for the host tools (`odmrgw sd ...`), run on the micropython
# executable so the image is read and written by the same VfsFat as on the box.
# Usage: micropython sdtool.py (mkfs IMAGE BYTES | ls IMAGE [PATH] |
#        cat IMAGE PATH | put IMAGE SRC DEST | get IMAGE SRC DEST | df IMAGE |
#        export IMAGE DEST)
import os
import sys
from board import Board, make_image

_CHUNK = 4096


def _card_path(path):
    return Board.sd_root + "/" + path.lstrip("/") if path.strip("/") else Board.sd_root


def _copy(src, dst):
    buf = bytearray(_CHUNK)
    mv = memoryview(buf)
    while True:
        n = src.readinto(buf)
        if not n:
            return
        dst.write(mv[:n])


def _is_dir(path):
    return os.stat(path)[0] & 0x4000


def cmd_ls(path="/"):
    full = _card_path(path)
    if not _is_dir(full):
        print("%10d  %s" % (os.stat(full)[6], path))
        return
    for entry in sorted(os.ilistdir(full)):
        name, kind = entry[0], entry[1]
        if kind & 0x4000:
            print("%10s  %s/" % ("-", name))
        else:
            print("%10d  %s" % (os.stat(full + "/" + name)[6], name))


def cmd_cat(path):
    with open(_card_path(path), "rb") as f:
        _copy(f, sys.stdout.buffer)


def _mkdir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass  # already there


def _makedirs(path):
    cur = ""
    for part in path.split("/")[:-1]:
        if part:
            cur += "/" + part
            _mkdir(cur)


def cmd_put(src, dest):
    full = _card_path(dest)
    _makedirs(full)
    with open(src, "rb") as s, open(full, "wb") as d:
        _copy(s, d)


def cmd_get(src, dest):
    with open(_card_path(src), "rb") as s, open(dest, "wb") as d:
        _copy(s, d)


def _human(n):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" if unit == "bytes" else "%.1f %s") % (n, unit)
        n /= 1024


def cmd_df():
    st = os.statvfs(Board.sd_root)
    size, free = st[0] * st[2], st[0] * st[3]
    print("%s FAT card: %s used, %s free (%d%%)" % (_human(size), _human(size - free), _human(free), free * 100 // size))


def cmd_export(dest):
    """Every mailbox as a Maildir DEST/<user>/{cur,new,tmp}: each message is
    written to tmp/ and renamed into new/ (the Maildir rule), with LF line
    ends as Maildir readers expect."""
    from gateway.mailbox import Mailboxes

    boxes = Mailboxes(Board.sd_root + "/mail", None)
    buf = bytearray(_CHUNK)
    _mkdir(dest)
    for user in boxes.users_on_card():
        base = dest + "/" + user
        for sub in ("", "/cur", "/new", "/tmp"):
            _mkdir(base + sub)
        n = 0
        for id in boxes.each(user):  # not a list: 10,000 ids would not fit the heap
            src = boxes.open_body(user, id, buf)
            if src is None:
                continue
            name = "%d.%s.odmrgw" % (boxes.info(user, id)[2], id)
            with open(base + "/tmp/" + name, "wb") as out:
                while True:
                    piece = src.piece()
                    if not piece:
                        break
                    if piece[-2:] == b"\r\n":
                        out.write(piece[:-2])
                        out.write(b"\n")
                    else:
                        out.write(piece)
            src.close()
            os.rename(base + "/tmp/" + name, base + "/new/" + name)
            n += 1
        print("%s: %d messages" % (user, n))


_WHY = {2: "no such file or directory", 17: "already exists", 20: "not a directory", 21: "is a directory",
        28: "the card is full", 30: "read-only"}


def main(argv):
    if len(argv) < 2:
        raise SystemExit("usage: sdtool.py COMMAND IMAGE [ARGS]")
    cmd, image, args = argv[0], argv[1], argv[2:]
    if cmd == "mkfs":
        try:
            make_image(image, int(args[0]))
        except OSError as e:
            raise OSError("cannot make a %s FAT image (%s)" % (_human(int(args[0])), _WHY.get(e.errno) or e))
        return
    board = Board(image)
    board.mount_sd()
    try:
        {"ls": cmd_ls, "cat": cmd_cat, "put": cmd_put, "get": cmd_get, "df": cmd_df, "export": cmd_export}[cmd](*args)
    except OSError as e:
        # name what the command was working on; errno alone names nothing
        raise OSError("%s: %s" % (" ".join(args) or image, _WHY.get(e.errno) or e))
    finally:
        board.umount_sd()


try:
    main(sys.argv[1:])
except OSError as e:
    sys.stderr.write("odmrgw sd: %s\n" % e)
    sys.exit(1)
except KeyError:
    sys.stderr.write("sd: unknown command\n")
    sys.exit(2)
