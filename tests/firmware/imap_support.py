# What the IMAP tests share: a mailbox with messages in it, and a session
# fed scripted bytes (the bytes a client sends, split where a test says).
import support

# Validated (every default filled in) before the firmware's modules load, as
# the box does at boot.
CFG = support.config(dict(support.OFFICE, smtp={"allow": ["127.0.0.0/8"]}))

from gateway.imap import session as imap  # noqa: E402
from gateway.mailbox import Mailboxes  # noqa: E402
from gateway.policy import Policy  # noqa: E402
from gateway.spool import Spool  # noqa: E402

PLAIN = (b"From: Ann Example <ann@outside.test>\r\nTo: alice@example.test, \"Bob, B.\" <bob@example.test>\r\n"
         b"Subject: hello there\r\nMessage-ID: <m1@outside.test>\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n\r\n"
         b"line one\r\nline two\r\n")
MULTI = (b"From: carol@outside.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\n"
         b"Content-Type: text/plain; charset=utf-8\r\n\r\nthe text\r\n--XX\r\n"
         b"Content-Type: multipart/alternative; boundary=YY\r\n\r\n--YY\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n"
         b"--YY--\r\n--XX\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
         b"QUJD\r\n--XX--\r\nepilogue\r\n")
RP = b"Return-Path: <sender@outside.test>\r\n"


def box_with(*messages, root=None):
    """Mailboxes under root (a fresh directory by default) with these
    messages for alice; and their ids."""
    root = root or support.tmpdir()
    policy = Policy(CFG)
    spool = Spool(root + "/spool")
    spool.recover()
    boxes = Mailboxes(root + "/mail", policy, spool)
    ids = []
    for m in messages:
        d = spool.begin("sender@outside.test", [("alice@example.test", "local")])
        d.write(m)
        ids.append(d.commit())
    boxes.deliver_pending(spool)
    return boxes, ids


class Flood(support.ScriptedStream):
    """A scripted stream where a number among the chunks stands for that
    many bytes of "x", made as they are read (10 MB in no test's heap)."""

    async def readinto(self, buf):
        if self.chunks and isinstance(self.chunks[0], int):
            n = min(self.chunks[0], len(buf))
            for i in range(n):
                buf[i] = 120
            self.chunks[0] -= n
            if not self.chunks[0]:
                self.chunks.pop(0)
            return n
        return await super().readinto(buf)


def talk(boxes, *chunks, tls=None):
    """What the server says to a client that sends these chunks, then
    closes; the session runs to its end."""
    stream = Flood(chunks)
    s = imap.IMAPSession(stream, stream, boxes, tls, "127.0.0.1", clock=lambda: 1764600000)
    support.run(s.run())
    return bytes(stream.out)


def tagged(out, tag):
    """The tagged reply line of tag."""
    for line in out.split(b"\r\n"):
        if line.startswith(tag + b" "):
            return line
    raise AssertionError("no reply tagged %r in %r" % (tag, out))


LOGIN = b"a1 LOGIN alice alice-pw\r\n"
