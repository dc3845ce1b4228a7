# The ODMR pull alone, without the rest of the app (no config validation,
# console, mailboxes or smarthost): what the pull itself needs of the heap.
#   micropython pull_once.py CONFIG.json IMAGE
# Prints "OUTCOME code pulled text"; exits 0 when the pull went well.
import sys

from board import Board


def main():
    # The big blocks first, while the heap is one piece: the card's FatFs
    # state (4.3 KB) and the turned line's 4 KB buffer; then the code, which
    # is many small blocks that fill whatever gaps are left.
    board = Board(sys.argv[2])
    root = board.mount_sd()
    from gateway import odmr
    from gateway.compat import drop_modules

    buf = odmr.session_buffer()
    import asyncio
    import json

    asyncio.open_connection  # noqa: B018 - loads asyncio's stream module now, not mid-connect
    from gateway.spool import Spool

    def handler():
        # Made at the turn, after the client's code was dropped: the
        # receiver and the policy never share the heap with it.
        from gateway.handlers import InboundHandler
        from gateway.policy import Policy

        return InboundHandler(cfg, spool, Policy(cfg))

    try:
        with open(sys.argv[1]) as f:
            cfg = json.load(f)  # a validated config (gateway.config.save's), read without the validator's code
        spool = Spool(root + "/spool", board.now)
        spool.recover()
        drop_modules(("gateway.spoolread",))
        out = asyncio.run(odmr.pull(cfg, handler, buf, odmr.CUSTOMER + ("gateway.sasl",)))
        print("OUTCOME", out.code, out.pulled, out.text)
        return 0 if out.ok else 1
    finally:
        board.umount_sd()


sys.exit(main())
