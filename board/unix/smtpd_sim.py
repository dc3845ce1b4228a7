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


def serve(port, max_size="10240000", buffer="0"):
    from gateway.smtp import server

    if int(buffer):
        server.SMTPSession.buffer_size = int(buffer)
    server.reserve()
    import asyncio
    import micropython
    from gateway.spool import Spool

    class Sink(server.Handler):
        hostname = "sim.test"

        def rcpt(self, session, address):
            return "local"

        def delivered(self, session, id):
            gc.collect()
            print("QUEUED %s heap=%d peak=%d" % (id, gc.mem_alloc(), micropython.mem_peak()))

    Sink.spool = Spool(root + "/spool", clock=board.now)
    Sink.max_size = int(max_size)
    kept, removed = Sink.spool.recover()

    async def run():
        await server.serve(Sink, "127.0.0.1", int(port))
        gc.collect()
        print("READY kept=%d removed=%d heap=%d" % (kept, removed, gc.mem_alloc()))
        while True:
            await asyncio.sleep(3600)

    asyncio.run(run())


def check():
    """What a rebooted box would find: the body of each pending message is
    summed without the Received: header this receiver put on top."""
    import binascii

    from gateway.spool import Spool

    spool = Spool(root + "/spool")
    kept, removed = spool.recover()
    buf = bytearray(512)
    mv = memoryview(buf)
    for id in spool.ids("local"):
        env = spool.envelope(id)
        crc = 0
        skip = -1  # until the end of our two-line Received: header
        with spool.open(id) as body:
            while True:
                n = body.readinto(buf)
                if not n:
                    break
                start = 0
                if skip < 0:
                    skip = buf.find(b"\r\n", buf.find(b"\r\n\t") + 3) + 2
                    start = skip
                crc = binascii.crc32(mv[start:n], crc)
        print("MSG %s %d %08x %s %s" % (id, env.size - skip, crc, env.mail_from or "<>", " ".join(a for a, _ in env.rcpts)))
    print("KEPT %d REMOVED %d" % (kept, removed))
    board.umount_sd()


if sys.argv[1] == "serve":
    serve(*sys.argv[3:])
else:
    check()
