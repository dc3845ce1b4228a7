# `smtpd_sim.py check IMAGE` (see there): what a rebooted box would find on
# the card. A module of its own so that the serving receiver does not carry
# this code in its heap.
import binascii

from gateway.spool import Spool


def check(board, root):
    """Mounts and recovers like a boot, then prints each pending message's
    body summed without the Received: header this receiver put on top."""
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
