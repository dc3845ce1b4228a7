# Random byte sessions against the SMTP engine, on both runtimes: whatever
# arrives, every reply is a well-formed SMTP reply, the session ends, and the
# spool holds exactly the messages that got a 250. (The hypothesis version
# with shrinking runs on CPython: tests/e2e/test_receiver_fuzz.py.)
import random

import support
from gateway.smtp import server
from gateway.spool import Spool

# Compiling server.py, data.py and spool.py from source needs well over 64 KB.
MICROPYTHON_HEAP = "192k"

WORDS = (
    b"EHLO x\r\n", b"HELO y\r\n", b"MAIL FROM:<a@b.test>\r\n", b"MAIL FROM:<>\r\n", b"MAIL FROM:<a@b.test> SIZE=10\r\n",
    b"RCPT TO:<c@d.test>\r\n", b"RCPT TO:<no@d.test>\r\n", b"DATA\r\n", b"RSET\r\n", b"NOOP\r\n", b"VRFY x\r\n",
    b"HELP\r\n", b"AUTH PLAIN\r\n", b"QUIT\r\n", b".\r\n", b"..\r\n", b"\r\n", b"\n", b"\r", b"\r\n.\r\n", b"\n.\n",
    b"\r.\r", b"\n.\r\n", b".", b"x" * 70, b"\x00\xff", b"MAIL", b" ", b"Subject: s\r\n",
)


class Accept(server.Handler):
    def rcpt(self, session, address):
        return (550, "5.1.1 No") if address.startswith("no@") else "local"


def check_session(chunks, root, seen):
    sp = Spool(root)
    h = Accept()
    h.spool = sp
    stream = support.ScriptedStream(chunks)
    s = server.SMTPSession(stream, stream, h, "192.0.2.1")
    s.max_errors = 8
    support.run(s.run())
    assert stream.closed
    queued = 0
    out = bytes(stream.out)
    assert not out or out.endswith(b"\r\n"), out[-40:]
    for line in out.split(b"\r\n")[:-1]:
        assert len(line) >= 3 and line[:3].isdigit() and line[3:4] in (b" ", b"-"), line
        assert line[:1] in (b"2", b"3", b"4", b"5"), line
        queued += line.startswith(b"250 2.0.0 OK queued as ")
        seen[line[:3]] = seen.get(line[:3], 0) + 1
    assert len(sp.ids("local")) == queued
    assert sp.recover() == (queued, 0)
    for id in sp.ids("local"):
        sp.done(id, "local")


PREFIX = b"EHLO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"


def random_session():
    """Random words and bytes; half the sessions start a message first, so
    the DATA phase (and smuggling attempts inside it) gets its share."""
    parts = [PREFIX] if random.randrange(2) else []
    for _ in range(random.randrange(1, 30)):
        if random.randrange(5):
            parts.append(random.choice(WORDS))
        else:
            parts.append(bytes(random.getrandbits(8) for _ in range(random.randrange(1, 20))))
        if random.randrange(12) == 0:
            parts.append(b"\r\n.\r\n")
    blob = b"".join(parts)
    chunks = []
    i = 0
    while i < len(blob):
        k = random.randrange(1, 64)
        chunks.append(blob[i : i + k])
        i += k
    return chunks


def test_random_byte_sessions_get_wellformed_replies_and_end():
    card = support.Card()
    random.seed(5321)
    seen = {}
    for _ in range(200):
        check_session(random_session(), card.root + "/spool", seen)
    card.unmount()
    # The batch reached every corner: messages stored and refused, errors, the cap.
    for code in (b"354", b"250", b"550", b"500", b"503", b"421"):
        assert seen.get(code, 0) >= 3, (code, seen)
