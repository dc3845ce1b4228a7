"""The provider's scale path (issue 17): a real Postfix (Debian's package,
a private instance on loopback) is the MX for the held domain and hands its
mail to the relay's smtp listener, configured from `odmrgw relay
postfix-config`; the box (the firmware as .mpy on the micropython
executable) pulls it over ATRN, and its outgoing mail and the relay's
bounces leave through the relay and Postfix to a sink that plays the world.
swaks, the Internet's sender, connects from 127.0.0.2, which is not in
Postfix's mynetworks; the relay's own traffic comes from 127.0.0.1, which is."""
import email
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from host_tools import mpy
from host_tools.mpy import compile_firmware
from host_tools.relay.testing import Customer, Postfix, RelayProcess, Sink, swaks, write_config
from tests.e2e.test_odmr_outbound import MESSAGE, Box
from tests.e2e.test_odmr_pull import ODMRGW

pytestmark = pytest.mark.skipif(not shutil.which("postfix") or os.geteuid() != 0,
                                reason="needs Debian's postfix and root (its master starts its daemons as the postfix user)")

# Written the way swaks reads a file (LF lines; it sends CRLF). A dot line, an
# empty line, trailing blanks and a 990-octet line: what a careless hop mangles.
INCOMING = ("From: Sender <sender@outside.test>\nTo: alice@example.test\nSubject: through postfix\n"
            "Date: Tue, 01 Dec 2026 12:00:00 +0000\nMessage-ID: <pf1@outside.test>\n\n"
            ".a line that starts with a dot\n\n..two dots\ntrailing blanks   \n" + "x" * 990 + "\nlast line\n")

# The box's outgoing test message with a Date: Postfix adds one to mail from
# a local client (the relay) that has none, which is right but not byte for byte.
OUTGOING = MESSAGE.replace(b"Subject: out\r\n", b"Subject: out\r\nDate: Tue, 01 Dec 2026 12:00:00 +0000\r\n")


@pytest.fixture(scope="module")
def firmware_mpy(tmp_path_factory):
    return compile_firmware(tmp_path_factory.mktemp("mpy"))


class Provider:
    """Postfix in front, the relay behind it, and the world (an aiosmtpd sink)."""

    def __init__(self, tmp, stale=""):
        self.world = Sink()
        self.world_listener = self.world.serve()
        self.relay = self.postfix = None
        try:
            self._start(tmp, stale)
        except BaseException:
            self.close()        # whatever did start is stopped, Postfix above all
            raise

    def _start(self, tmp, stale):
        intake, self.mx = mpy.free_port(), mpy.free_port()
        d = tmp / "provider"
        d.mkdir()
        # bob is on the relay's list but has no mailbox on the box: the box
        # refuses him, and the relay's bounce must leave through Postfix.
        conf = write_config(d / "relay.toml", d / "queue",
                            accounts=[("office", "s3cret", ["example.test"], ["alice@example.test", "bob@example.test"])],
                            listen={"smtp": f"127.0.0.1:{intake}", "odmr": "127.0.0.1:0", "submission": "127.0.0.1:0"},
                            next_hop=f"127.0.0.1:{self.mx}")
        maps = d / "postfix"
        maps.mkdir()
        lines = subprocess.run([ODMRGW, "relay", "postfix-config", "--config", conf, "--write", "--maps", maps],
                               capture_output=True, text=True, timeout=60)
        assert lines.returncode == 0, lines.stderr
        with open(maps / "odmr_recipients", "a") as f:
            f.write(stale)      # an address the relay no longer knows, as a map not yet regenerated would have
        self.postfix = Postfix(maps, self.mx, f"127.0.0.1:{self.world_listener.port}", main=lines.stdout).start()
        self.relay = RelayProcess(conf).start()

    def box(self, tmp, mpy_dir):
        box = Box(tmp, mpy_dir, {"host": "127.0.0.1", "port": self.relay.ports["submission"], "tls": "none",
                                 "user": "office", "secret": "s3cret"})
        cfg = json.loads((box.flash / "gw.json").read_text())
        cfg["relay"] = {"host": "127.0.0.1", "port": self.relay.ports["odmr"], "tls": "none",
                        "user": "office", "secret": "s3cret"}
        (box.flash / "gw.json").write_text(json.dumps(cfg))
        (box.tmp / "msg").write_bytes(OUTGOING)
        return box

    def queued(self, box="domains/example.test"):
        return [row for row in (line.split() for line in self.relay.queue("list").stdout.splitlines()) if row[1] == box]

    def wait(self, what, seconds=30):
        deadline = time.monotonic() + seconds
        while not what() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert what(), self.postfix.log()[-3000:]

    def close(self):
        for part in (self.relay, self.postfix, self.world_listener):
            if part:
                part.stop()


@pytest.fixture
def provider(tmp_path, request):
    p = Provider(tmp_path, getattr(request, "param", ""))
    yield p
    p.close()


def test_mail_sent_into_postfix_reaches_the_box_over_atrn_byte_for_byte(provider, tmp_path, firmware_mpy):
    sent = swaks(provider.mx, "alice@example.test", INCOMING)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    provider.wait(lambda: provider.queued())
    box = provider.box(tmp_path, firmware_mpy)
    r = box.once()
    assert r.returncode == 0 and "pulled 1 message(s)" in r.stdout, r.stdout + r.stderr
    (got,) = box.mailbox("alice")
    # Postfix, the relay and the box each put a Received: line on top; below
    # them the message is what swaks sent (the export writes LF line ends).
    assert got.endswith(INCOMING.encode())
    assert got.count(b"Received: ") == 3
    assert got.index(b"by gw.example.test") < got.index(b"by relay.test") < got.index(b"by postfix.test")
    assert provider.queued() == []
    # The queue is empty now: a second ATRN hears 453.
    c = Customer(provider.relay.ports["odmr"])
    try:
        assert c.login()[0] == 453
    finally:
        c.close()


def test_a_recipient_unknown_to_the_relay_is_refused_by_postfix_at_rcpt(provider):
    sent = swaks(provider.mx, "nobody@example.test", INCOMING)
    assert sent.returncode != 0
    assert "<** 550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown in relay recipient table" \
        in sent.stdout, sent.stdout
    # Refused before DATA: Postfix never took it, so no one bounces. (A reply
    # line, not the substring: the port in "Trying 127.0.0.1:35479" had it.)
    assert not re.search(r"^<-\s+354 ", sent.stdout, re.M), sent.stdout
    assert provider.queued() == [] and provider.world.messages == []


def test_the_box_outgoing_mail_leaves_through_the_relay_and_postfix(provider, tmp_path, firmware_mpy):
    box = provider.box(tmp_path, firmware_mpy)
    box.queue("alice@example.test", ["bob@outside.test"])
    r = box.once()
    assert "sent 1, deferred 0, bounced 0" in r.stdout, r.stdout + r.stderr
    provider.wait(lambda: provider.world.messages)
    ((mail_from, rcpts, data),) = provider.world.messages
    assert (mail_from, rcpts) == ("alice@example.test", ["bob@outside.test"])
    assert data.endswith(OUTGOING) and b"by postfix.test" in data and b"by relay.test" in data


def test_the_relays_bounce_leaves_through_postfix(provider, tmp_path, firmware_mpy):
    sent = swaks(provider.mx, "bob@example.test", INCOMING)
    assert sent.returncode == 0, sent.stdout
    provider.wait(lambda: provider.queued())
    r = provider.box(tmp_path, firmware_mpy).once()
    assert r.returncode == 0, r.stdout + r.stderr
    provider.wait(lambda: provider.world.messages)
    ((mail_from, rcpts, data),) = provider.world.messages
    assert mail_from in ("", "<>") and rcpts == ["sender@outside.test"]
    dsn = email.message_from_bytes(data)
    assert dsn.get_content_type() == "multipart/report"
    assert [p.get_content_type() for p in dsn.get_payload()][-1] == "text/rfc822-headers"
    assert b"Final-Recipient: rfc822; bob@example.test" in data and b"two dots" not in data


@pytest.mark.parametrize("provider", ["carol@example.test\tOK\n"], indirect=True)
def test_a_recipient_only_a_stale_map_knows_is_refused_by_the_relay_and_bounced_by_postfix_at_once(provider):
    sent = swaks(provider.mx, "carol@example.test", INCOMING)
    assert sent.returncode == 0, sent.stdout            # Postfix's map still lists carol
    # The relay refuses her at RCPT, so Postfix bounces at once (no retries
    # for days) to the real sender, from its own queue; the relay keeps nothing.
    provider.wait(lambda: provider.world.messages)
    ((mail_from, rcpts, data),) = provider.world.messages
    assert mail_from in ("", "<>") and rcpts == ["sender@outside.test"]
    assert b"<carol@example.test>: no such recipient here" in data and b"by postfix.test" in data
    assert provider.queued() == []
