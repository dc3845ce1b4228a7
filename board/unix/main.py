# Entry point of the simulated board: micropython board/unix/main.py --sd IMAGE
import sys
from board import Board


def _arg(name, default=None):
    argv = sys.argv
    return argv[argv.index(name) + 1] if name in argv else default


def main():
    image = _arg("--sd")
    if not image:
        raise SystemExit("usage: main.py --sd IMAGE [--status]")
    board = Board(image)
    board.mount_sd()
    try:
        from gateway import app

        for label, value in app.status(board):
            print("%-9s %s" % (label, value))
    finally:
        board.umount_sd()


main()
