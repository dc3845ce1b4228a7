# A bare SMTP receiver on the simulated card, for tests and benchmarks that
# talk to it with real clients (smtplib, swaks) or pull its plug (kill -9):
#
#   micropython smtpd_sim.py serve IMAGE PORT [MAX_SIZE] [BUFFER]
#       recovers the spool, then accepts any recipient into queue "local";
#       BUFFER sets the session's input buffer (bytes).
#       Prints "READY kept=K removed=R" once listening, and for every
#       message "QUEUED <id> heap=<live bytes> peak=<mem_peak>".
#   micropython smtpd_sim.py check IMAGE
#       mounts and recovers the card (as at boot) and prints
#       "MSG <id> <size> <crc32> <mail from> <rcpt>..." per pending message
#       (size and crc32 of the message as the client sent it, un-stuffed,
#       without our Received: header), then "KEPT k REMOVED r".
# Make the image on the host first (odmrgw sd mkfs IMAGE --size 96M): FatFs's
# mkfs needs a 4 KB block that a fragmented 64k heap may not have.
import gc
import sys

# A 64k heap gets cut into small pieces as modules load, so the big blocks
# come first: FatFs's 4 KB window (mount) and the session's input buffer.
from board import Board

board = Board(sys.argv[2])
root = board.mount_sd()


def serve(port, max_size="10240000", buffer="4096"):
    # The session's buffer before any code: the receiver's 17 KB of it cut
    # a 64k heap into pieces smaller than 4 KB.
    buf = bytearray(int(buffer) or 4096)
    from gateway.compat import drop_modules
    from gateway.spool import Spool

    spool = Spool(root + "/spool", clock=board.now)
    kept, removed = spool.recover()
    # A box that only receives needs the spool's reading side (recovery,
    # listings) at boot only: dropped, its code leaves ~5 KB to the sessions.
    drop_modules(("gateway.spoolread",))
    from gateway.smtp import server

    server.SMTPSession.buffer_size = len(buf)
    server.reserve(1, (buf,))
    buf = None
    import asyncio
    import micropython

    class Sink(server.Handler):
        hostname = "sim.test"

        def rcpt(self, session, address):
            return "local"

        def delivered(self, session, id, rcpts):
            gc.collect()
            print("QUEUED %s heap=%d peak=%d" % (id, gc.mem_alloc(), micropython.mem_peak()))

    Sink.spool = spool
    Sink.max_size = int(max_size)

    async def run():
        await server.serve(Sink, "127.0.0.1", int(port))
        gc.collect()
        print("READY kept=%d removed=%d heap=%d" % (kept, removed, gc.mem_alloc()))
        while True:
            await asyncio.sleep(3600)

    asyncio.run(run())


if sys.argv[1] == "serve":
    serve(*sys.argv[3:])
else:
    from smtpd_check import check

    check(board, root)
