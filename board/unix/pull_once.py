# The ODMR pull alone, without the rest of the app (no config validation,
# console, mailboxes or smarthost): what the pull itself needs of the heap.
#   micropython pull_once.py CONFIG.json IMAGE
# Prints "OUTCOME code pulled text"; exits 0 when the pull went well.
import json
import sys

from board import Board


def main():
    import asyncio

    from gateway import odmr
    from gateway.policy import InboundHandler, Policy
    from gateway.spool import Spool

    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    board = Board(sys.argv[2])
    root = board.mount_sd()
    try:
        spool = Spool(root + "/spool", board.now)
        spool.recover()
        buf = odmr.session_buffer()  # before the connection cuts the heap up
        out = asyncio.run(odmr.pull(cfg, InboundHandler(cfg, spool, Policy(cfg)), buf))
        print("OUTCOME", out.code, out.pulled, out.text)
        return 0 if out.ok else 1
    finally:
        board.umount_sd()


sys.exit(main())
