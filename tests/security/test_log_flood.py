# Attacks that try to end sessions with bad bytes, or to wash the security
# lines out of the log ring with a flood.
from attacker import Office, attack
from gateway import log

# Both listeners, the spool and the test's clients (compiled from source)
# in one process; the box's own budget is the budget suite's (docs/heap.md).
MICROPYTHON_HEAP = "256k"


def test_a_non_utf8_byte_gets_err_and_the_pop3_session_goes_on():
    # Issue 12, 9: on MicroPython (whose decode ignores errors="replace")
    # one such byte ended the session with "session failed: UnicodeError()".
    office = Office()
    lines = []

    async def script(o):
        p = await o.pop()
        await p.send(b"USER \xff\xfe\r\n")
        assert (await p.line()) == "-ERR command is not UTF-8 text"
        await p.send(b"\xc3\r\n")
        assert (await p.line()).startswith("-ERR")
        await p.pop("USER alice")
        assert (await p.pop("PASS alice-pw")).startswith("+OK")
        assert (await p.pop("QUIT")).startswith("+OK")
        await p.close()

    log.attach(lines.append)
    try:
        attack(office, script)
    finally:
        log.attach(None)
    assert not [line for line in lines if "session failed" in line], lines


def test_a_flood_of_one_line_is_summarised_and_the_security_lines_stay():
    lines = []
    log.attach(lines.append)
    try:
        log.warn("pop3: failed login for 'alice' from 192.0.2.9")
        for _ in range(555):
            log.error("pop3: session failed: UnicodeError()")
        log.warn("pop3: failed login for 'bob' from 192.0.2.9")
        for _ in range(2 * log.HELD + 5):
            log.info("same again")
        log.info("done")
    finally:
        log.attach(None)
    assert lines == [
        "W pop3: failed login for 'alice' from 192.0.2.9",
        "E pop3: session failed: UnicodeError()",
        "E pop3: session failed: UnicodeError() ... repeated 554 times",
        "W pop3: failed login for 'bob' from 192.0.2.9",
        "I same again",
        "I same again ... repeated %d times" % log.HELD,
        "I same again ... repeated %d times" % log.HELD,
        "I same again ... repeated 4 times",
        "I done",
    ]
