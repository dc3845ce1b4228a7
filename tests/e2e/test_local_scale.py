"""A mailbox bigger than one POP3 session, on the real micropython executable:
a card prepared with the firmware's own spool and mailbox code at a large
heap (thousands in alice's mailbox, thousands waiting in the spool for the
smarthost), then the box booted on it at a small heap. POP3 shows the oldest
MAX_LISTED with stable UIDLs, and after those are deleted the next batch.
`make bench` (bench_card) does the same at 10,000 and reports the figures."""
import subprocess

from host_tools import mpy
from tests.e2e.test_local import ODMRGW, LocalGateway, firmware_mpy  # noqa: F401 - the fixture

# The budget of the heap issue is 112k on the 32-bit build; this is the
# 64-bit unix port with 8-byte pointers, run at test_local's heap.
STORED = 3000
WAITING = 1000
LISTED = 300  # Mailboxes.MAX_LISTED

PREPARE = """
import sys
from board import Board, FileBlockDev
from gateway.mailbox import Mailboxes
from gateway.policy import Policy
from gateway.spool import Spool

# Preparing a card needs no durability: no sync per message.
real = FileBlockDev.ioctl
FileBlockDev.ioctl = lambda self, op, arg: 0 if op == 3 else real(self, op, arg)
image, stored, waiting = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
b = Board(image)
root = b.mount_sd()
t = [1600000000]  # long ago: the dedupe index of those days is gone


def clock():
    t[0] += 1
    return t[0]


spool = Spool(root + "/spool", clock)
spool.start()
from gateway import config
cfg = config.validate({"users": {"alice": {"password": "x", "addresses": ["alice@example.test"]},
                                 "bob": {"password": "y", "addresses": ["bob@example.test"]}}})
boxes = Mailboxes(root + "/mail", Policy(cfg), spool)
body = b"x" * 900 + b"\\r\\n"
for i in range(stored + waiting):
    rcpt = ("alice@example.test", "local") if i < stored else ("someone@outside.test", "out")
    d = spool.begin("sender@outside.test", [rcpt])
    d.write(b"Subject: stored %d\\r\\nMessage-ID: <s%d@example.test>\\r\\n\\r\\n" % (i, i))
    d.write(body)
    d.commit()
b.umount_sd()
print("PREPARED")
"""


def prepare_card(tmp_path, mpy_dir, image, stored, waiting):
    """Fills image (made by `odmrgw sd mkfs`) with the firmware's own code."""
    script = tmp_path / "prepare.py"
    script.write_text(PREPARE)
    out = mpy.run(script, image, stored, waiting, heap="2m", extra_paths=[mpy_dir], capture_output=True, text=True,
                  timeout=1800)
    assert "PREPARED" in out.stdout, out.stdout + out.stderr


def make_card(tmp_path, size):
    image = tmp_path / "big.img"
    subprocess.run([ODMRGW, "sd", "mkfs", image, "--size", size], check=True, capture_output=True)
    return image


def test_thousands_stored_boot_and_pop3_shows_batches(tmp_path, firmware_mpy):
    gw = LocalGateway(tmp_path, firmware_mpy)
    prepare_card(tmp_path, firmware_mpy, gw.image, STORED, WAITING)
    try:
        gw.start()
        c = gw.pop()
        count, _ = c.stat()
        assert count == LISTED
        uids = [line.split()[1] for line in c.uidl()[1]]
        assert len(uids) == LISTED and uids == sorted(uids)
        assert len(c.list()[1]) == LISTED
        assert b"Subject: stored 0" in b"\r\n".join(c.top(1, 0)[1])
        assert b"Subject: stored 1" in b"\r\n".join(c.retr(2)[1])
        for n in range(1, LISTED + 1):
            c.dele(n)
        c.quit()
        c = gw.pop()
        assert c.stat()[0] == LISTED
        following = [line.split()[1] for line in c.uidl()[1]]
        assert following[0] > uids[-1] and not set(following) & set(uids)
        assert b"Subject: stored %d" % LISTED in b"\r\n".join(c.top(1, 0)[1])
        c.quit()
        # The LAN still delivers, and the new mail waits behind the rest.
        s = gw.smtp()
        s.sendmail("bob@example.test", ["alice@example.test"], b"Subject: new\r\n\r\nhello\r\n")
        s.quit()
        gw.wait_for("DELIVERED")
        assert not [line for line in gw.lines if "Error" in line or line.startswith("E ")]
    finally:
        gw.stop()
