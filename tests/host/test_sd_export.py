"""`odmrgw sd export IMAGE DEST`: every mailbox on a card image as a Maildir,
round trip from mail delivered by the firmware on micropython."""
import email
import subprocess
import sys
from pathlib import Path

from host_tools import mpy

ODMRGW = str(Path(sys.executable).parent / "odmrgw")

FILL = """
import sys
from board import Board
from gateway.mailbox import Mailboxes
from gateway.policy import Policy
from gateway.spool import Spool
from gateway import config
cfg = config.validate({"users": {"alice": {"password": "a", "addresses": ["alice@example.test"]},
                                 "bob": {"password": "b", "addresses": ["bob@example.test"]}}, "catch_all": {}})
board = Board(sys.argv[1])
root = board.mount_sd()
spool = Spool(root + "/spool")
spool.recover()
boxes = Mailboxes(root + "/mail", Policy(cfg))
for i in range(int(sys.argv[2])):
    d = spool.begin("sender@outside.test", [("alice@example.test", "local")] + ([("bob@example.test", "local")] if i % 2 else []))
    d.write(b"Subject: n%d\\r\\nMessage-ID: <e%d@x>\\r\\n\\r\\n.dot line\\r\\nbody %d\\r\\n" % (i, i, i))
    d.commit()
boxes.deliver_pending(spool)
boxes.expunge("alice", [boxes.listing("alice").uid(0)])
board.umount_sd()
"""


def test_export_writes_one_maildir_per_user(tmp_path):
    img = tmp_path / "card.img"
    subprocess.run([ODMRGW, "sd", "mkfs", img, "--size", "8M"], check=True)
    script = tmp_path / "fill.py"
    script.write_text(FILL)
    # Compiling spool and mailbox from source needs more than the default heap.
    mpy.run(script, img, 5, heap="256k", check=True, capture_output=True)
    dest = tmp_path / "export"
    r = subprocess.run([ODMRGW, "sd", "export", img, dest], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "alice: 4 messages" in r.stdout and "bob: 2 messages" in r.stdout
    for user, count in (("alice", 4), ("bob", 2)):
        assert sorted(p.name for p in (dest / user).iterdir()) == ["cur", "new", "tmp"]
        assert not list((dest / user / "tmp").iterdir()) and not list((dest / user / "cur").iterdir())
        files = sorted((dest / user / "new").iterdir())
        assert len(files) == count
        for f in files:
            raw = f.read_bytes()
            assert b"\r\n" not in raw  # Maildir: LF line ends
            msg = email.message_from_bytes(raw)
            assert msg["Return-Path"] == "<sender@outside.test>"
            assert msg.get_payload().startswith(".dot line\nbody ")
    subjects = sorted(email.message_from_bytes(f.read_bytes())["Subject"] for f in (dest / "alice" / "new").iterdir())
    assert subjects == ["n1", "n2", "n3", "n4"]  # n0 was deleted over POP3 before the export


def test_export_of_a_card_without_mail_is_empty_not_an_error(tmp_path):
    img = tmp_path / "card.img"
    subprocess.run([ODMRGW, "sd", "mkfs", img, "--size", "2M"], check=True)
    r = subprocess.run([ODMRGW, "sd", "export", img, tmp_path / "out"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_export_of_a_mailbox_of_thousands_fits_the_tools_heap(tmp_path):
    # A list of every id took 32 KB blocks that the tool's heap did not have
    # at 3,000 messages (MemoryError); the export walks the mailbox instead.
    from tests.e2e.test_local_scale import PREPARE

    img = tmp_path / "card.img"
    subprocess.run([ODMRGW, "sd", "mkfs", img, "--size", "64M"], check=True)
    script = tmp_path / "prepare.py"
    script.write_text(PREPARE)
    out = mpy.run(script, img, 3000, 0, heap="2m", capture_output=True, text=True, timeout=600)
    assert "PREPARED" in out.stdout, out.stdout + out.stderr
    dest = tmp_path / "export"
    r = subprocess.run([ODMRGW, "sd", "export", img, dest], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "alice: 3000 messages" in r.stdout
    files = sorted((dest / "alice" / "new").iterdir())
    assert len(files) == 3000
    assert email.message_from_bytes(files[-1].read_bytes())["Subject"] == "stored 2999"
