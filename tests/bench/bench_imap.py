"""IMAP against POP3 on the same box in the same run: the firmware on
micropython (localsrv_sim.py on a card image, .mpy as on the box) serving
alice's 1000 stored messages and bob's large ones over both protocols.

- headers: 1000 message headers, over IMAP as FETCH of BODY.PEEK[HEADER]
  (the same bytes as POP3's TOP n 0) and as the FETCH a mail client sends
  when it opens a folder (neomutt's items: UID, FLAGS, INTERNALDATE,
  RFC822.SIZE and its HEADER.FIELDS list), against POP3 TOP n 0 with every
  command of a batch pipelined (the box offers PIPELINING). A session lists
  the oldest Mailboxes.MAX_LISTED (300) of a folder, so the 1000 are the
  listed 300 three times over and 100 more, in one session each way.
- download: bob's whole messages, IMAP BODY.PEEK[] against POP3 RETR.
Both clients are raw sockets reading to the end of each answer, so the
client's own parsing weighs on neither side. Rounds are interleaved (IMAP,
POP3, IMAP, ...); each round's ratio is IMAP rate / POP3 rate, reported as
the median with min and max.

The heap: on the same box before the rounds, the free heap after a
collection (the sim's READY and LOW lines, sampled ten times a second, a
new LOW once it is 1 KB below the last) at READY, with one client that
selected the INBOX and fetched its headers (this loads IMAP's code), and
with four such clients at once: the further sessions' share is the
difference over three."""
import json
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from host_tools import mpy
from tests.e2e.test_local import ODMRGW, USERS, LocalGateway, compile_firmware, free_port

ROUNDS = 5
STORED = 1000  # alice's, for the headers
HEADERS = 1000
LISTED = 300  # Mailboxes.MAX_LISTED: what one session shows of a folder
LARGE = 4  # bob's, for the downloads
LARGE_SIZE = 1 << 20
HEAP = "320k"  # tests/e2e/test_imap_clients.py's: SMTP, POP3 and IMAP in one process
CARD = "64M"
SESSIONS = 4  # IMAP clients at once for the heap figure, each from an address of its own
# neomutt's FETCH when it opens a folder (tests/e2e/test_imap_clients.py drives it)
CLIENT_ITEMS = (b"(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (DATE FROM SENDER SUBJECT TO CC "
                b"MESSAGE-ID REFERENCES CONTENT-TYPE CONTENT-DESCRIPTION IN-REPLY-TO REPLY-TO LINES LIST-POST "
                b"X-LABEL)])")
TIMEOUT = 300  # s for any one answer

PREPARE = """
import sys
from board import Board, FileBlockDev
from gateway import config
from gateway.mailbox import Mailboxes
from gateway.policy import Policy
from gateway.spool import Spool

# Preparing a card needs no durability: no sync per message.
real = FileBlockDev.ioctl
FileBlockDev.ioctl = lambda self, op, arg: 0 if op == 3 else real(self, op, arg)
cfg_path, image, stored, large, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
b = Board(image)
root = b.mount_sd()
t = [1600000000]


def clock():
    t[0] += 1
    return t[0]


spool = Spool(root + "/spool", clock)
spool.start()
boxes = Mailboxes(root + "/mail", Policy(config.load(cfg_path)), spool)
# A header as mail from outside has it: two Received lines, a DKIM signature.
head = (b"Received: from mx.outside.test (mx.outside.test [192.0.2.7]) by relay.example.test with ESMTPS id %d;"
        b" Tue, 1 Dec 2026 09:00:00 +0000\\r\\n"
        b"Received: from pc.outside.test by mx.outside.test with ESMTPSA; Tue, 1 Dec 2026 08:59:58 +0000\\r\\n"
        b"DKIM-Signature: v=1; a=rsa-sha256; d=outside.test; s=mail; h=from:to:subject:date:message-id;\\r\\n"
        b" bh=" + b"Q" * 44 + b";\\r\\n b=" + b"Z" * 70 + b"\\r\\n " + b"Z" * 100 + b"\\r\\n"
        b"From: Carol Example <carol@outside.test>\\r\\nTo: Alice <alice@example.test>\\r\\n"
        b"Subject: order %d\\r\\nDate: Tue, 1 Dec 2026 09:00:00 +0000\\r\\nMessage-ID: <o%d.%d@outside.test>\\r\\n"
        b"MIME-Version: 1.0\\r\\nContent-Type: text/plain; charset=utf-8\\r\\n\\r\\n")
text = b"".join(b"line %03d of the order, seventy-odd characters as mail text has them ...\\r\\n" % i for i in range(40))
line = b"x" * 78 + b"\\r\\n"


def store(user, n, body, times):
    for i in range(n):
        d = spool.begin("carol@outside.test", [(user + "@example.test", "local")])
        d.write(head % (i, i, i, times))
        for _ in range(times):
            d.write(body)
        d.commit()
        if i % 50 == 49:
            boxes.deliver_pending(spool)
    while boxes.deliver_pending(spool):
        pass


store("alice", stored, text, 1)
store("bob", large, line * 1024, size // (80 * 1024))
b.umount_sd()
print("PREPARED")
"""


class Wire:
    """A raw client socket: commands out, bytes in to the end of an answer."""

    def __init__(self, port, source="127.0.0.1"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0))

    def recv(self):
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the box closed the connection")
        return chunk

    def close(self):
        self.sock.close()


class Pop3(Wire):
    END = b"\r\n.\r\n"

    def __init__(self, port, user):
        Wire.__init__(self, port)
        self.line()
        for cmd in (b"USER %s" % user.encode(), b"PASS %s" % USERS[user].encode()):
            self.sock.sendall(cmd + b"\r\n")
            assert self.line().startswith(b"+OK"), cmd

    def line(self):
        data = b""
        while not data.endswith(b"\r\n"):
            data += self.recv()
        return data

    def multi(self, commands):
        """Sends commands at once (PIPELINING); returns the bytes of their
        multi-line answers."""
        self.sock.sendall(b"".join(c + b"\r\n" for c in commands))
        got, seen, tail = 0, 0, b""
        while seen < len(commands):
            chunk = self.recv()
            seen += (tail + chunk).count(self.END)  # tail is shorter than END: no end is counted twice
            tail = chunk[-4:]
            got += len(chunk)
        return got

    def sizes(self):
        self.sock.sendall(b"LIST\r\n")
        data = b""
        while not data.endswith(self.END):
            data += self.recv()
        return [int(x.split()[1]) for x in data.split(b"\r\n")[1:-2]]

    def quit(self):
        self.sock.sendall(b"QUIT\r\n")
        self.line()
        self.close()


class Imap(Wire):
    def __init__(self, port, user, source="127.0.0.1"):
        Wire.__init__(self, port, source)
        self.tag = 0
        while not self.sock.recv(1 << 10).endswith(b"\r\n"):
            pass
        self.command(b"LOGIN %s %s" % (user.encode(), USERS[user].encode()))

    def command(self, text):
        """Sends one command; returns the bytes of its answer once tagged OK."""
        self.tag += 1
        tag = b"\r\nb%d " % self.tag
        self.sock.sendall(tag[2:] + text + b"\r\n")
        data = bytearray(b"\r\n")
        while True:
            data += self.recv()
            if data.endswith(b"\r\n"):
                end = data.rfind(tag, max(0, len(data) - 512))
                if end >= 0:
                    assert data[end + len(tag):end + len(tag) + 2] == b"OK", bytes(data[end:])
                    return len(data) - 2

    def logout(self):
        self.command(b"LOGOUT")
        self.close()


def timed(fn):
    t0 = time.perf_counter()
    got = fn()
    return max(time.perf_counter() - t0, 1e-6), got


def batches():
    """The message numbers of the 1000 headers, one listing's worth at a time."""
    left = HEADERS
    while left:
        n = min(left, LISTED)
        yield n
        left -= n


def imap_headers(port, items):
    c = Imap(port, "alice")
    c.command(b"EXAMINE INBOX")
    got = sum(c.command(b"FETCH 1:%d %s" % (n, items)) for n in batches())
    c.logout()
    return got


def pop3_headers(port):
    c = Pop3(port, "alice")
    got = sum(c.multi([b"TOP %d 0" % i for i in range(1, n + 1)]) for n in batches())
    c.quit()
    return got


def imap_download(port):
    c = Imap(port, "bob")
    c.command(b"EXAMINE INBOX")
    got = sum(c.command(b"FETCH %d BODY.PEEK[]" % i) for i in range(1, LARGE + 1))
    c.logout()
    return got


def pop3_download(port):
    c = Pop3(port, "bob")
    got = sum(c.multi([b"RETR %d" % i]) for i in range(1, LARGE + 1))
    c.quit()
    return got


def prepare(gw, tmp_path):
    subprocess.run([ODMRGW, "sd", "mkfs", gw.image, "--size", CARD, "--force"], check=True, capture_output=True)
    script = tmp_path / "prepare.py"
    script.write_text(PREPARE)
    out = mpy.run(script, gw.config, gw.image, STORED, LARGE, LARGE_SIZE, heap="2m", extra_paths=[gw.mpy_dir],
                  capture_output=True, text=True, timeout=1800)
    assert "PREPARED" in out.stdout, out.stdout + out.stderr


def settled_low(gw):
    """The lowest free heap the sim has printed, once it printed no new
    low for a second (at most 10 s)."""
    end = time.monotonic() + 10
    n = -1
    while time.monotonic() < end and n != len(gw.lines):
        n = len(gw.lines)
        time.sleep(1)
    return min(int(x.split("heap=")[1]) for x in gw.lines if x.startswith(("READY", "LOW")))


def heap_figures(gw):
    """(free at READY, the first client's cost, a further session's)."""
    ready = int(gw.wait_for("READY")[0].split("heap=")[1])
    clients = []
    try:
        for i in range(SESSIONS):
            c = Imap(gw.imap_port, "alice", source=f"127.0.0.{i + 1}")
            c.command(b"SELECT INBOX")
            c.command(b"FETCH 1:* " + CLIENT_ITEMS)
            clients.append(c)
            if i == 0:
                first = settled_low(gw)
        last = settled_low(gw)
    finally:
        for c in clients:
            c.logout()
    return ready, ready - first, (first - last) / (SESSIONS - 1)


def ratios(imap, pop3):
    r = [a / b for a, b in zip(imap, pop3)]
    return f"{statistics.median(r):.2f}x", f"min {min(r):.2f}x, max {max(r):.2f}x over {len(r)} interleaved rounds"


def run(report):
    report("box", f"localsrv_sim.py, -X heapsize={HEAP}",
           f"micropython: {mpy.micropython_exe()}, {mpy.pointer_bits()}-bit")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        gw = LocalGateway(tmp_path, compile_firmware(tmp_path / "mpy"), heap=HEAP)
        gw.imap_port = free_port()
        cfg = json.loads(gw.config.read_text())
        cfg["imap"] = {"port": gw.imap_port, "sessions": SESSIONS}
        gw.config.write_text(json.dumps(cfg))
        prepare(gw, tmp_path)
        gw.start()
        try:
            ready, first, further = heap_figures(gw)
            p = Pop3(gw.pop3_port, "bob")
            mb = sum(p.sizes()) / 1e6
            p.quit()
            runs = {k: [] for k in ("imap_head", "imap_client", "pop3_head", "imap_body", "pop3_body")}
            for _ in range(ROUNDS):
                runs["imap_head"].append(timed(lambda: imap_headers(gw.imap_port, b"(BODY.PEEK[HEADER])")))
                runs["pop3_head"].append(timed(lambda: pop3_headers(gw.pop3_port)))
                runs["imap_client"].append(timed(lambda: imap_headers(gw.imap_port, CLIENT_ITEMS)))
                runs["imap_body"].append(timed(lambda: imap_download(gw.imap_port)))
                runs["pop3_body"].append(timed(lambda: pop3_download(gw.pop3_port)))
            errors = [x for x in gw.lines if x.startswith(("E ", "Traceback"))]
        finally:
            gw.stop()
    short = [k for k in ("imap_body", "pop3_body") for _, got in runs[k] if got < mb * 1e6]
    per_s = {k: [HEADERS / s for s, _ in v] for k, v in runs.items() if k.endswith(("head", "client"))}
    mbps = {k: [mb / s for s, _ in v] for k, v in runs.items() if k.endswith("body")}
    for key, what in (("imap_head", "IMAP FETCH BODY.PEEK[HEADER]"), ("imap_client", "IMAP FETCH, neomutt's items"),
                      ("pop3_head", "POP3 TOP n 0, pipelined")):
        rates = per_s[key]
        report(f"{HEADERS} headers: {what}", f"{statistics.median(rates):.0f} headers/s",
               f"{statistics.median([g for _, g in runs[key]]) / 1e3:.0f} KB sent; runs "
               + ", ".join(f"{x:.0f}" for x in rates))
    report(f"{HEADERS} headers: ratio IMAP HEADER / POP3 TOP", *ratios(per_s["imap_head"], per_s["pop3_head"]))
    report(f"{HEADERS} headers: ratio IMAP neomutt's / POP3 TOP", *ratios(per_s["imap_client"], per_s["pop3_head"]))
    for key, what in (("imap_body", "IMAP FETCH BODY.PEEK[]"), ("pop3_body", "POP3 RETR")):
        report(f"{LARGE} x {LARGE_SIZE >> 20} MB download: {what}", f"{statistics.median(mbps[key]):.1f} MB/s",
               "runs " + ", ".join(f"{x:.1f}" for x in mbps[key]))
    report(f"{LARGE} x {LARGE_SIZE >> 20} MB download: ratio IMAP / POP3", *ratios(mbps["imap_body"], mbps["pop3_body"]))
    report("heap: free at READY (SMTP, POP3, IMAP listening)", f"{ready:,} bytes")
    report("heap: the first IMAP client", f"{first / 1024:.1f} KB",
           f"SELECT of {LISTED} listed + FETCH of their headers; loads IMAP's code; 1 KB resolution")
    report("heap: each further IMAP session", f"{further / 1024:.1f} KB",
           f"{SESSIONS - 1} more clients, each SELECT + FETCH of {LISTED} headers, held at once")
    report("downloads complete", "every one" if not short else f"FAILED: {len(short)} short, {short[0]}",
           "each answer at least the messages' stored bytes")
    report("box errors", "none" if not errors else f"{len(errors)}: {errors[0]}")


if __name__ == "__main__":
    from tests.bench.__main__ import report as _report

    run(_report)
