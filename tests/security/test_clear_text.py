# Attacks that read passwords off the LAN: PLAIN, LOGIN and POP3's USER/PASS
# carry the password itself. TLS handshakes with real clients (smtplib,
# poplib) against the micropython box are in test_tls_logins.py.
from attacker import CFG, Office, attack
from gateway import sasl

# Both listeners, the spool and the test's clients (compiled from source)
# in one process; the box's own budget is the budget suite's (docs/heap.md).
MICROPYTHON_HEAP = "256k"


def test_plain_and_login_are_refused_in_clear_and_cram_md5_still_works():
    # Issue 12, 3: the LAN listener offered AUTH PLAIN LOGIN without TLS.
    cfg = dict(CFG)
    del cfg["clear_text_logins"]  # the default: false
    office = Office(cfg)

    async def script(o):
        c = await o.smtp()
        assert "AUTH CRAM-MD5" in c.ehlo[1] and "STARTTLS" not in c.ehlo[1]  # no certificate configured
        code, lines = await c.cmd("AUTH PLAIN " + sasl.plain_response("alice", "alice-pw").decode())
        assert code == 538 and lines[0].startswith("5.7.11")
        assert (await c.cmd("AUTH LOGIN"))[0] == 538
        code, lines = await c.cmd("AUTH CRAM-MD5")
        assert (await c.cmd(sasl.cram_md5_response("alice", "alice-pw", lines[0].encode()).decode()))[0] == 235
        await c.close()

    attack(office, script)
