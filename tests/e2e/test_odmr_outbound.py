"""The outbound half of the poll cycle on the real micropython executable
(firmware as .mpy): mail in the card's "out" queue goes to the desktop
relay's submission listener (AUTH required) and on to its next hop, byte
for byte; against aiosmtpd directly, a refused recipient becomes an RFC 3464
bounce in the sender's mailbox while the accepted one leaves the card."""
import email
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from host_tools import mpy
from host_tools.relay.testing import RelayProcess, Sink, write_config
from host_tools.mpy import compile_firmware
from tests.e2e.test_odmr_pull import MAIN, ODMRGW

# The whole app as .mpy plus the outbound flush (gateway.outbound, the
# client's sending half, dsn for the bounce), loaded only when mail is
# queued for the smarthost: 16k more than a pull alone needs (176k failed).
HEAP = "192k"

# Puts one message into the card's "out" queue, as the LAN listener would.
QUEUE = """
import sys
from board import Board
from gateway.spool import Spool
b = Board(sys.argv[1])
sp = Spool(b.mount_sd() + "/spool", b.now)
if sys.argv[2] == "count":
    print("OUT", len(sp.ids("out")), "LOCAL", len(sp.ids("local")))
else:
    d = sp.begin(sys.argv[2], [(a, "out") for a in sys.argv[3].split(",")])
    with open(sys.argv[4], "rb") as f:
        d.write(f.read())
    print("QUEUED", d.commit())
b.umount_sd()
"""
MESSAGE = (b"From: alice@example.test\r\nTo: bob@outside.test\r\nSubject: out\r\nMessage-ID: <o1@example.test>\r\n\r\n"
           b".starts with a dot\r\nsecond line\r\n..two dots\r\n")


@pytest.fixture(scope="module")
def firmware_mpy(tmp_path_factory):
    return compile_firmware(tmp_path_factory.mktemp("mpy"))


class Box:
    def __init__(self, tmp, mpy_dir, smarthost):
        self.tmp, self.mpy_dir = tmp, mpy_dir
        self.image = tmp / "card.img"
        subprocess.run([ODMRGW, "sd", "mkfs", self.image, "--size", "32M"], check=True, capture_output=True)
        self.flash = tmp / "flash"
        self.flash.mkdir()
        (self.flash / "gw.json").write_text(json.dumps({
            "hostname": "gw.example.test", "domains": ["example.test"], "smarthost": smarthost,
            "users": {"alice": {"password": "pw", "addresses": ["alice@example.test"]}}}))
        (tmp / "queue.py").write_text(QUEUE)
        (tmp / "msg").write_bytes(MESSAGE)

    def spool(self, *args):
        r = mpy.run(self.tmp / "queue.py", self.image, *args, heap=HEAP, extra_paths=[self.mpy_dir],
                    capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout.split()

    def queue(self, sender, rcpts):
        return self.spool(sender, ",".join(rcpts), self.tmp / "msg")

    def once(self):
        return mpy.run(MAIN, "--config", self.flash / "gw.json", "--sd", self.image, "--once", heap=HEAP,
                       extra_paths=[self.mpy_dir], capture_output=True, text=True, timeout=120)

    def mailbox(self, user):
        dest = self.tmp / "export"
        shutil.rmtree(dest, ignore_errors=True)
        subprocess.run([ODMRGW, "sd", "export", self.image, dest], check=True, capture_output=True)
        return [p.read_bytes() for p in (dest / user).glob("*/*") if p.is_file()]


def test_outgoing_mail_through_the_relays_submission_service(tmp_path, firmware_mpy):
    sink = Sink()
    hop = sink.serve()
    conf = write_config(tmp_path / "relay.toml", tmp_path / "queue", next_hop=f"127.0.0.1:{hop.port}",
                        listen={"smtp": "127.0.0.1:0", "submission": "127.0.0.1:0"})
    relay = RelayProcess(conf).start()
    try:
        box = Box(tmp_path, firmware_mpy, {"host": "127.0.0.1", "port": relay.ports["submission"], "tls": "none",
                                          "user": "office", "secret": "s3cret"})
        box.queue("alice@example.test", ["bob@outside.test"])
        r = box.once()
        assert "sent 1, deferred 0, bounced 0" in r.stdout, r.stdout + r.stderr
        assert box.spool("count") == ["OUT", "0", "LOCAL", "0"]
        import time

        deadline = time.monotonic() + 20
        while not sink.messages and time.monotonic() < deadline:
            time.sleep(0.1)
        mail_from, rcpts, data = sink.messages[0]
        assert mail_from == "alice@example.test" and rcpts == ["bob@outside.test"]
        assert data.endswith(MESSAGE)  # the relay may add its Received: line
    finally:
        relay.stop()
        hop.stop()


def test_a_refused_recipient_bounces_to_the_sender_and_the_accepted_one_leaves(tmp_path, firmware_mpy):
    sink = Sink(policy=lambda a: "550 5.1.1 No such user here" if a.startswith("nobody@") else None, pipelining=True)
    hop = sink.serve()
    try:
        box = Box(tmp_path, firmware_mpy, {"host": "127.0.0.1", "port": hop.port, "tls": "none"})
        box.queue("alice@example.test", ["bob@outside.test", "nobody@outside.test"])
        r = box.once()
        assert "sent 1, deferred 0, bounced 1" in r.stdout, r.stdout + r.stderr
        assert sink.messages[0][1] == ["bob@outside.test"] and sink.messages[0][2] == MESSAGE
        assert box.spool("count") == ["OUT", "0", "LOCAL", "0"]  # the bounce went on into the mailbox
        (bounce,) = box.mailbox("alice")
        msg = email.message_from_bytes(bounce)
        assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "delivery-status"
        parts = msg.get_payload()
        status = parts[1].get_payload()
        fields = {k: v for block in status for k, v in block.items()}
        assert fields["Final-Recipient"] == "rfc822; nobody@outside.test"
        assert fields["Action"] == "failed" and fields["Status"] == "5.1.1"
        assert "550 5.1.1 No such user here" in fields["Diagnostic-Code"]
        assert b"Subject: out" in bounce and b"starts with a dot" not in bounce
    finally:
        hop.stop()
