"""IMAP with real clients, Python's imaplib, isync's mbsync, offlineimap3 and
getmail6, against the firmware on the real micropython executable (localsrv_sim.py on a card
image, .mpy as on the box), with POP3 (poplib) and the LAN SMTP listener
(smtplib) beside it: the same mailbox, the same UIDs, one deletion."""
import email
import imaplib
import json
import os
import shutil
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.test_local import LocalGateway, firmware_mpy, free_port  # noqa: F401 - the fixture

# One process serves SMTP, POP3 and IMAP with IMAP's modules loaded; the
# 64-bit build's code is 1.4x the ESP32's (docs/heap.md).
HEAP = "320k"


@pytest.fixture
def gateway(tmp_path, firmware_mpy):
    gw = LocalGateway(tmp_path, firmware_mpy, heap=HEAP)
    cfg = json.loads(gw.config.read_text())
    gw.imap_port = free_port()
    cfg["imap"] = {"port": gw.imap_port, "sessions": 4}
    gw.config.write_text(json.dumps(cfg))
    try:
        yield gw.start()
    finally:
        gw.stop()


def send(gw, n, first=0):
    """n notes to alice, numbered from first (a number used again would be
    a re-send, which the box drops)."""
    with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=20) as s:
        for i in range(first, first + n):
            s.sendmail("bob@example.test", ["alice@example.test"],
                       f"From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: note {i}\r\n"
                       f"Message-ID: <n{i}@example.test>\r\n\r\nbody of note {i}\r\n")
    gw.wait_for("DELIVERED")


def synced(gw, tmp_path, template, **more):
    """A Maildir for alice's mail and a client config from template, as
    (maildir, config path), once 3 notes are in the box."""
    send(gw, 3)
    home = tmp_path / "maildir"
    home.mkdir()
    rc = tmp_path / "clientrc"
    rc.write_text(template.format(port=gw.imap_port, home=home, **more))
    return home, rc


def run(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ERROR" not in r.stdout + r.stderr, r.stdout + r.stderr


def imap(gw, user="alice", pw=None):
    c = imaplib.IMAP4("127.0.0.1", gw.imap_port, timeout=20)
    c.login(user, pw or {"alice": "alice-pw", "bob": "bob-pw"}[user])
    return c


def test_imaplib_reads_flags_searches_and_expunges_what_pop3_sees(gateway):
    send(gateway, 3)
    c = imap(gateway)
    typ, data = c.select("INBOX")
    assert typ == "OK" and data == [b"3"]
    typ, data = c.uid("SEARCH", None, "ALL")
    uids = data[0].split()
    assert len(uids) == 3
    # POP3's UIDL of the same messages, in hex
    p = gateway.pop()
    _, listing, _ = p.uidl()
    assert [int(line.split()[1], 16) for line in listing] == [int(u) for u in uids]
    p.quit()
    typ, data = c.uid("FETCH", uids[1], "(BODY.PEEK[] FLAGS RFC822.SIZE)")
    msg = email.message_from_bytes(data[0][1])
    assert msg["Subject"] == "note 1" and b"FLAGS ()" in data[0][0] + data[1]
    typ, data = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert [d[1] for d in data if isinstance(d, tuple)] == [b"Subject: note %d\r\n\r\n" % i for i in range(3)]
    typ, data = c.fetch("1", "(ENVELOPE BODYSTRUCTURE)")
    assert b'"note 0" (("Bob" NIL "bob" "example.test"))' in data[0]
    assert b'BODYSTRUCTURE ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT"' in data[0]
    c.fetch("2", "(BODY[TEXT])")  # sets \Seen
    assert c.search(None, "UNSEEN")[1] == [b"1 3"]
    assert c.search(None, "SUBJECT", '"note 2"')[1] == [b"3"]
    c.store("1", "+FLAGS", "(\\Deleted)")
    typ, data = c.expunge()
    assert data == [b"1"]
    c.logout()
    # another device: the flags and the deletion are on the card
    c = imap(gateway)
    assert c.select("INBOX", readonly=True)[1] == [b"2"]
    assert c.fetch("1:*", "FLAGS")[1] == [b"1 (FLAGS (\\Seen))", b"2 (FLAGS ())"]
    c.logout()
    p = gateway.pop()
    assert p.stat()[0] == 2
    p.quit()


def test_pop3_deletion_and_new_mail_reach_an_open_imap_session(gateway):
    send(gateway, 2)
    c = imap(gateway)
    c.select("INBOX")
    p = gateway.pop()
    p.dele(1)
    p.quit()
    send(gateway, 1, 2)
    c.noop()
    assert c.untagged_responses["EXPUNGE"] == [b"1"] and c.untagged_responses["EXISTS"][-1] == b"2"
    assert c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1][0][1] == b"Subject: note 1\r\n\r\n"
    c.logout()


def test_wrong_password_and_two_devices_at_once(gateway):
    c = imaplib.IMAP4("127.0.0.1", gateway.imap_port, timeout=20)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.login("alice", "guess")
    c.logout()
    phone, pc = imap(gateway), imap(gateway)
    assert phone.select("INBOX")[0] == "OK" and pc.select("INBOX")[0] == "OK"
    assert phone.list()[1][:2] == [b'(\\HasNoChildren) "/" "INBOX"', b'(\\HasNoChildren \\Sent) "/" "Sent"']
    phone.logout()
    pc.logout()


MBSYNCRC = """IMAPAccount box
Host 127.0.0.1
Port {port}
User alice
Pass alice-pw
SSLType None
AuthMechs LOGIN

IMAPStore box
Account box

MaildirStore pc
Path {home}/
Inbox {home}/INBOX
SubFolders Verbatim

Channel office
Far :box:
Near :pc:
Patterns *
Create Both
Expunge Both
SyncState *
"""


@pytest.mark.skipif(not shutil.which("mbsync"), reason="isync (mbsync) is not installed (make deps)")
def test_mbsync_syncs_both_ways_with_a_maildir(gateway, tmp_path):
    home, rc = synced(gateway, tmp_path, MBSYNCRC)

    def sync():
        run("mbsync", "-c", str(rc), "-a")

    sync()
    inbox = sorted((home / "INBOX" / "new").iterdir())
    assert len(inbox) == 3 and {d.name for d in home.iterdir()} >= {"INBOX", "Sent", "Drafts", "Trash"}
    assert b"Subject: note 0" in inbox[0].read_bytes()
    # On the PC: the first message read, the second deleted, a mail saved to Sent.
    cur = home / "INBOX" / "cur"
    inbox[0].rename(cur / (inbox[0].name.split(":")[0] + ":2,S"))
    inbox[1].unlink()
    (home / "Sent" / "new" / "1.sent:2,S").write_bytes(b"From: alice@example.test\r\nSubject: my reply\r\n\r\nthanks\r\n")
    sync()
    c = imap(gateway)
    assert c.select("INBOX")[1] == [b"2"]
    assert c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1][0][0].startswith(b"1 (FLAGS (\\Seen)")
    assert c.select("Sent")[1] == [b"1"]
    assert c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1][0][1] == b"Subject: my reply\r\n\r\n"
    # and on the box: a message flagged on the phone reaches the PC
    c.select("INBOX")
    c.store("2", "+FLAGS", "(\\Flagged)")
    c.logout()
    sync()
    assert [p.name.endswith("F") for p in sorted(cur.iterdir()) + sorted((home / "INBOX" / "new").iterdir())].count(True) == 1
    p = gateway.pop()
    assert p.stat()[0] == 2  # POP3 sees the PC's deletion
    p.quit()


GETMAILRC = """[retriever]
type = SimpleIMAPRetriever
server = 127.0.0.1
port = {port}
username = alice
password = alice-pw
mailboxes = ("INBOX",)

[destination]
type = Maildir
path = {home}/
{user}
[options]
delete = true
read_all = false
verbose = 0
"""


@pytest.mark.skipif(not shutil.which("getmail"), reason="getmail6 is not installed (make deps)")
def test_getmail_fetches_new_mail_over_imap_and_deletes_it(gateway, tmp_path):
    send(gateway, 2)
    user = ""
    base = tmp_path
    if os.geteuid() == 0:
        # getmail delivers as root only as another user, who must reach the
        # Maildir: outside pytest's tree, whose top directory any pytest
        # session that starts meanwhile makes 0700 again.
        user = "user = nobody\n"
        base = Path(tempfile.mkdtemp(prefix="odmrgw-getmail-"))
        base.chmod(0o711)
    home = base / "Maildir"
    try:
        for sub in ("new", "cur", "tmp"):
            (home / sub).mkdir(parents=True)
        if user:
            for d in (home, *home.iterdir()):
                d.chmod(0o777)
        rc = tmp_path / "getmailrc"
        rc.write_text(GETMAILRC.format(port=gateway.imap_port, home=home, user=user))

        def fetch():
            run("getmail", "--getmaildir", str(tmp_path), "--rcfile", str(rc))
            return sorted((home / "new").iterdir())

        # Maildir names do not sort by arrival (their microseconds are not
        # zero-padded), so the messages are told apart by what they say
        got = fetch()
        subjects = sorted(line for f in got for line in f.read_bytes().splitlines() if line.startswith(b"Subject:"))
        assert subjects == [b"Subject: note 0", b"Subject: note 1"]
        c = imap(gateway)
        assert c.select("INBOX")[1] == [b"0"]  # delete = true: stored \\Deleted, then expunged
        c.logout()
        send(gateway, 1, 2)
        assert len(fetch()) == 3
    finally:
        if base != tmp_path:
            shutil.rmtree(base)


OFFLINEIMAPRC = """[general]
accounts = office
metadata = {meta}

[Account office]
localrepository = pc
remoterepository = box

[Repository pc]
type = Maildir
localfolders = {home}

[Repository box]
type = IMAP
remotehost = 127.0.0.1
remoteport = {port}
remoteuser = alice
remotepass = alice-pw
ssl = no
starttls = no
"""


@pytest.mark.skipif(not shutil.which("offlineimap"), reason="offlineimap3 is not installed (make deps)")
def test_offlineimap_syncs_both_ways_with_a_maildir(gateway, tmp_path):
    home, rc = synced(gateway, tmp_path, OFFLINEIMAPRC, meta=tmp_path / "meta")

    def sync():
        run("offlineimap", "-c", str(rc), "-o", "-u", "basic")

    sync()
    inbox = sorted((home / "INBOX" / "new").iterdir())
    assert len(inbox) == 3 and (home / "Sent").is_dir() and (home / "Trash").is_dir()
    inbox[0].unlink()
    (home / "Sent" / "new" / "1.sent:2,S").write_bytes(b"From: alice@example.test\r\nSubject: sent one\r\n"
                                                       b"Message-ID: <s1@example.test>\r\n\r\nhi\r\n")
    sync()
    c = imap(gateway)
    assert c.select("INBOX")[1] == [b"2"]
    assert c.select("Sent")[1] == [b"1"]
    assert c.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1][0] == (
        b"1 (FLAGS (\\Seen) BODY[HEADER.FIELDS (SUBJECT)] {21}", b"Subject: sent one\r\n\r\n")
    c.logout()


NEOMUTTRC = """set folder = "imap://alice@127.0.0.1:{port}/"
set imap_pass = "alice-pw"
set spoolfile = "+INBOX"
set record = "+Sent"
set smtp_url = "smtp://127.0.0.1:{smtp}"
set from = "alice@example.test"
set realname = "Alice"
set editor = "{editor}"
set tmpdir = "{home}"
set ssl_starttls = no
set ssl_force_tls = no
set header_cache = ""
set message_cachedir = ""
set sort = date-sent
set resolve = no
set confirmappend = no
set abort_unmodified = no
set delete = yes
set move = no
set mark_old = no
set quit = yes
set wait_key = no
set help = no
"""


class Neomutt:
    """neomutt in a tmux server of its own, read through its screen."""

    ROUNDS = 200  # looks at the screen, 0.1 s apart, before a wait gives up

    def __init__(self, tmp_path, gw):
        editor = tmp_path / "editor"
        editor.write_text("#!/bin/sh\nprintf 'see you at noon\\n' >> \"$1\"\n")
        editor.chmod(0o755)
        rc = tmp_path / "neomuttrc"
        rc.write_text(NEOMUTTRC.format(port=gw.imap_port, smtp=gw.smtp_port, editor=editor, home=tmp_path))
        self.socket = f"odmrgw-{os.getpid()}-{gw.imap_port}"
        self.env = {**os.environ, "HOME": str(tmp_path)}
        self.tmux("new-session", "-d", "-x", "160", "-y", "40", f"neomutt -n -F {rc}")

    def tmux(self, *args):
        return subprocess.run(["tmux", "-L", self.socket, *args], env=self.env, capture_output=True, text=True,
                              timeout=20)

    def screen(self):
        return self.tmux("capture-pane", "-p").stdout

    def keys(self, *keys):
        assert self.tmux("send-keys", *keys).returncode == 0, self.screen()

    def shows(self, text):
        for _ in range(self.ROUNDS):
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"neomutt never showed {text!r}:\n{screen}")

    def running(self):
        return self.tmux("has-session").returncode == 0

    def stop(self):
        self.tmux("kill-server")


def until(probe, what):
    """probe() until it returns something true, 100 tries 0.1 s apart."""
    for _ in range(100):
        got = probe()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"never {what}")


@pytest.mark.skipif(not (shutil.which("neomutt") and shutil.which("tmux")),
                    reason="neomutt and tmux are not installed (make deps)")
def test_neomutt_reads_flags_deletes_and_saves_what_it_sends_to_sent(gateway, tmp_path):
    send(gateway, 3)
    mutt = Neomutt(tmp_path, gateway)
    try:
        mutt.shows("Msgs:3 New:3")
        mutt.keys("2", "Enter")  # jump to message 2
        mutt.keys("Enter")       # and read it
        assert "Subject: note 1" in mutt.shows("body of note 1")
        mutt.keys("q")
        mutt.keys("1", "Enter", "F")
        mutt.keys("3", "Enter", "d")
        mutt.shows("Del:1 Flag:1")
        since = len(gateway.lines)
        mutt.keys("m")
        mutt.shows("To:")
        mutt.keys("bob@example.test", "Enter")
        mutt.shows("Subject:")
        mutt.keys("lunch", "Enter")
        mutt.shows("Fcc: +Sent")
        mutt.keys("y")  # send it through the box's SMTP, then APPEND it to Sent
        c = imap(gateway)
        until(lambda: c.select("Sent", readonly=True)[1] == [b"1"], "saw the sent mail in Sent")
        mutt.keys("$")  # write the flags, expunge the deleted one

        def inbox():
            c.select("INBOX", readonly=True)
            flags = c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1]
            return len(flags) == 4 and [(f[0].split(b" BODY")[0], f[1]) for f in flags[::2]]

        assert until(inbox, "saw neomutt's changes on the box") == [
            (b"1 (FLAGS (\\Flagged)", b"Subject: note 0\r\n\r\n"),
            (b"2 (FLAGS (\\Seen)", b"Subject: note 1\r\n\r\n")]
        c.select("Sent")
        sent = email.message_from_bytes(c.fetch("1", "(BODY.PEEK[])")[1][0][1])
        assert sent["Subject"] == "lunch" and sent["To"] == "bob@example.test"
        assert sent.get_payload() == "see you at noon\r\n"
        c.logout()
        gateway.wait_for("DELIVERED", since=since)
        p = gateway.pop("bob")
        assert b"Subject: lunch" in p.retr(1)[1]
        p.quit()
        mutt.keys("q")
        until(lambda: not mutt.running(), "saw neomutt quit")
    finally:
        mutt.stop()
