# Local delivery on the simulated card, for tests with real mail clients:
#   micropython localsrv_sim.py CONFIG.json IMAGE [LOGIN_DELAY]
# Opens the spool and the mailboxes as the App does (no message read, mail
# for one user written straight into its mailbox), delivers held local mail, then serves
# POP3 (cfg pop3.port), IMAP when cfg imap.port is set, and the LAN SMTP
# listener (cfg smtp.port) on 127.0.0.1. Prints "READY smtp=N pop3=M heap=F" once both listen,
# "DELIVERED heap=F" after local mail from the LAN went into the mailboxes,
# "POKE heap=F" when outside mail was queued (the scheduler's poke on the
# box), and "LOW heap=F" whenever the free heap reaches a new low (checked
# ten times a second); F is the free heap after a collection. LOGIN_DELAY (seconds) shortens
# the delay after a failed login for tests.
import sys

import asyncio
from board import Board
from gateway import config, lan, log, pop3
from gateway.guard import Logins
from gateway.mailbox import Mailboxes
from gateway.policy import Policy
from gateway.spool import Spool


def main(cfg_path, image, delay=None):
    import gc

    cfg = config.load(cfg_path)
    if delay is not None:
        Logins.DELAY = float(delay)
    board = Board(image)
    root = board.mount_sd()
    spool = Spool(root + "/spool", clock=board.now)
    spool.start()
    policy = Policy(cfg)
    boxes = Mailboxes(root + "/mail", policy, spool)

    def delivered(s):
        boxes.deliver_pending(s)
        gc.collect()
        print("DELIVERED heap=%d" % gc.mem_free())

    def poke():
        gc.collect()
        print("POKE heap=%d" % gc.mem_free())

    async def run():
        from gateway.smtp import server

        server.reserve(8)  # as the App does: session buffers before the heap is cut up
        await pop3.serve(cfg, boxes, "127.0.0.1", cfg["pop3"]["port"], cfg["pop3"]["sessions"])
        await lan.serve(cfg, spool, policy, "127.0.0.1", cfg["smtp"]["port"], delivered, poke, cfg["smtp"]["sessions"])
        if cfg["imap"]["port"]:  # as the App does: IMAP's code only when it is on
            from gateway.imap import listener as imap

            await imap.serve(cfg, boxes, "127.0.0.1")
        # As the App does: what waited in the spool goes on once the listeners are up.
        log.info("opened: %d delivered from the spool" % boxes.deliver_pending(spool))
        gc.collect()
        print("READY smtp=%d pop3=%d heap=%d" % (cfg["smtp"]["port"], cfg["pop3"]["port"], gc.mem_free()))
        low = gc.mem_free()
        while True:  # the lowest free heap after a collection, as it drops
            await asyncio.sleep(0.1)
            gc.collect()
            free = gc.mem_free()
            if free < low - 1024:
                low = free
                print("LOW heap=%d" % free)

    try:
        asyncio.run(run())
    finally:
        boxes.flush()
        board.umount_sd()


main(*sys.argv[1:])
