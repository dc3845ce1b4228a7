# Fills a card the way a year of office mail would, with the firmware's own
# spool and mailbox code (run at a large heap; the test then boots the box
# at its budget):
#   micropython fill_card.py IMAGE CONFIG STORED BIG_BYTES OUT LOCAL
# STORED messages spread over the config's users' mailboxes (the first gets
# one of BIG_BYTES too), then OUT queued for the smarthost and LOCAL
# waiting for local delivery. Prints the Message-IDs it made, one per line:
#   @@ <user or "out"> <message-id> <body length>
import json
import sys

from board import Board
from gateway import config
from gateway.mailbox import Mailboxes
from gateway.policy import Policy
from gateway.spool import Spool
from officemail import head, pieces


def put(spool, sender, rcpts, queue, tag, size):
    d = spool.begin(sender, [(a, queue) for a in rcpts])
    d.write(head(tag, rcpts[0]))
    for piece in pieces(tag, size):
        d.write(piece)
    d.commit()
    print("@@ %s %s %d" % (queue if queue == "out" else rcpts[0], tag.decode(), size))


def main():
    image, cfg_file = sys.argv[1], sys.argv[2]
    stored, big, out, local = [int(a) for a in sys.argv[3:7]]
    b = Board(image)
    root = b.mount_sd()
    with open(cfg_file) as f:
        cfg = config.validate(json.load(f))
    sp = Spool(root + "/spool", b.now)
    sp.recover()
    boxes = Mailboxes(root + "/mail", Policy(cfg))
    users = sorted(cfg["users"])
    addr = [cfg["users"][u]["addresses"][0] for u in users]
    put(sp, "outside@far.test", [addr[0]], "local", b"big-0", big)
    boxes.deliver_pending(sp)
    for i in range(stored):
        put(sp, "outside@far.test", [addr[i % len(addr)]], "local", b"stored-%d" % i, 600 + (i * 37) % 3000)
        if i % 50 == 49:
            boxes.deliver_pending(sp)
    boxes.deliver_pending(sp)
    for i in range(out):
        put(sp, addr[0], ["partner%d@far.test" % i], "out", b"out-%d" % i, 1500)
    for i in range(local):
        put(sp, "outside@far.test", [addr[i % len(addr)]], "local", b"waiting-%d" % i, 900)
    b.umount_sd()


main()
