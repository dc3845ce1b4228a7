# Attacks that try to send mail through the box to the outside world.
import support
from attacker import Office, attack, send
from gateway import sasl
from gateway.guard import Logins

# Both listeners, the spool and the test's clients (compiled from source)
# in one process; the box's own budget is the budget suite's (docs/heap.md).
MICROPYTHON_HEAP = "256k"


def test_a_user_without_a_password_logs_in_by_no_mechanism():
    # Issue 12, 1: `AUTH PLAIN \0carol\0` and CRAM-MD5 keyed with an empty
    # secret got 235, and the box relayed to the outside.
    office = Office()

    async def script(o):
        c = await o.smtp()
        assert (await c.cmd("AUTH PLAIN AGNhcm9sAA=="))[0] == 535
        code, lines = await c.cmd("AUTH CRAM-MD5")
        assert code == 334
        assert (await c.cmd(sasl.cram_md5_response("carol", "", lines[0].encode()).decode()))[0] == 535
        assert (await c.cmd("AUTH LOGIN " + sasl.b64encode(b"carol").decode()))[0] == 334
        assert (await c.cmd(sasl.b64encode(b"x").decode()))[0] == 535
        assert (await c.reply())[0] == 421  # three failures end a session
        await c.close()
        c = await o.smtp()
        assert await send(c, "carol@example.test", ["victim@outside.test"]) == [250, 550]
        await c.close()
        p = await o.pop()
        await p.pop("USER carol")
        assert (await p.pop("PASS ")).startswith("-ERR [AUTH]")
        await p.close()

    with support.patched(Logins, DELAY=0):
        attack(office, script)
    assert office.spool.ids("out") == []


def test_what_held_path_tricks_in_pop3_user_and_rcpt_reach_no_file():
    # Held in issue 12's run; replayed so it stays that way.
    office = Office()

    async def script(o):
        p = await o.pop()
        for name in ("../alice", "alice/../bob", "/etc/passwd", "..", "alice\x00"):
            await p.pop("USER " + name)
            assert (await p.pop("PASS alice-pw")).startswith("-ERR"), name
        await p.close()
        c = await o.smtp()
        for rcpt in ("../alice@example.test", "alice/../bob@example.test", "..@example.test"):
            assert (await send(c, "x@outside.test", [rcpt]))[1] == 550, rcpt
        await c.close()

    with support.patched(Logins, DELAY=0, MAX_FAILURES=50, SESSION_TRIES=50):
        attack(office, script)
    assert office.spool.ids("local") == [] and office.spool.ids("out") == []
