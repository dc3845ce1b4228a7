# Attacks that try to forge header lines in mail the box stores or passes on.
import support
from attacker import Office, attack, send
from mailbox_support import stored

# Both listeners, the spool and the test's clients (compiled from source)
# in one process; the box's own budget is the budget suite's (docs/heap.md).
MICROPYTHON_HEAP = "256k"

INJECTED = "pc1\rX-Injected-By-Helo: yes\rReceived: from trusted.example (10.9.9.9)"


def test_ehlo_with_bare_cr_gets_501_and_writes_nothing_into_the_received_line():
    # Issue 12, 4: the bare CRs went into the box's own Received: line, where
    # Python's email parser (and the next MTA) read forged header lines.
    office = Office()

    async def script(o):
        c = await o.smtp(helo=None)
        for verb in ("EHLO", "HELO"):
            for arg in (INJECTED, "pc1\x00", "pc1\x1b[2J", "pc\xe9"):
                code, lines = await c.cmd("%s %s" % (verb, arg))
                assert code == 501, (verb, arg, code)
                assert "Injected" not in " ".join(lines)
        # No HELO was taken: the session never got one.
        assert (await c.cmd("MAIL FROM:<bob@example.test>"))[0] == 503
        assert (await c.cmd("EHLO pc1.example.test"))[0] == 250
        assert await send(c, "bob@example.test", ["alice@example.test"]) == [250, 250, 250]
        await c.close()

    attack(office, script)
    listing = office.boxes.listing("alice")
    assert len(listing) == 1
    body = stored(office.boxes, "alice", listing.uid(0))
    assert b"Received: from pc1.example.test (127.0.0.1)" in body
    assert b"Injected" not in body and b"\r" not in body.replace(b"\r\n", b"")


def test_a_bare_cr_in_a_smarthost_reply_forges_no_line_in_the_bounce():
    # The reply reader splits on LF only, so a smarthost's (or a relay's)
    # reply text may hold bare CRs; the DSN quotes that text in header-like
    # lines the sender's mail client parses.
    from gateway import dsn

    class Draft:
        data = b""

        def write(self, buf):
            self.data += buf

    class Env:
        id, mail_from, received = "0000002a", "alice@example.test", 951782400

    d = Draft()
    dsn.write(d, "gw.example.test", Env(), [("b@x.test", 550, "5.1.1 no\rFrom: CEO <ceo@example.test>\x00")], 951782500)
    assert b"\r" not in d.data.replace(b"\r\n", b"") and b"\x00" not in d.data
    assert b"Diagnostic-Code: smtp; 550 5.1.1 no?From: CEO <ceo@example.test>?\r\n" in d.data

