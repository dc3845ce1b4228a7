# Attacks that guess passwords: fast, pipelined, in parallel, and switching
# between SMTP and POP3. One record per client address (gateway.guard)
# counts every failure, whichever protocol it came by.
import asyncio

import support
from attacker import Office, attack
from gateway import log, sasl
from gateway.guard import Logins

# Both listeners, the spool, the test's clients (compiled from source) and,
# in one test, eight sessions at once, in one process.
MICROPYTHON_HEAP = "256k"


def guess(pw):
    return "AUTH PLAIN " + sasl.plain_response("alice", pw).decode()


def test_pipelined_smtp_guesses_get_three_tries_a_session_then_the_address_is_locked_for_both_protocols():
    # Issue 12, 2: 5,016 pipelined guesses took 11.8 s, with no delay, no
    # lockout and no log line, and the right password worked right after.
    office = Office()
    lines = []

    async def script(o):
        c = await o.smtp()
        await c.send("".join(guess("guess%d" % i) + "\r\n" for i in range(20)).encode())
        codes = []
        for _ in range(4):
            codes.append((await c.reply())[0])
        assert codes == [535, 535, 535, 421]
        assert await c.closed()
        await c.close()
        p = await o.pop()  # changing protocol does not start the count again
        for pw in ("guess20", "guess21"):
            await p.pop("USER alice")
            assert (await p.pop("PASS " + pw)).startswith("-ERR [AUTH]")
        await p.pop("USER alice")
        assert (await p.pop("PASS alice-pw")).startswith("-ERR [SYS/TEMP] too many failed logins")
        await p.close()
        c = await o.smtp()  # the right password no longer works from here
        code, text = await c.cmd(guess("alice-pw"))
        assert code == 454 and "too many failed logins" in text[0].lower()
        assert (await c.cmd("MAIL FROM:<alice@example.test>"))[0] == 250
        assert (await c.cmd("RCPT TO:<victim@outside.test>"))[0] == 550
        await c.close()
        o.policy.logins().clock = lambda: support_now() + Logins.LOCK_TIME + 1  # a quarter of an hour later
        c = await o.smtp()
        assert (await c.cmd(guess("alice-pw")))[0] == 235
        await c.close()

    log.attach(lines.append)
    try:
        with support.patched(Logins, DELAY=0):
            attack(office, script)
    finally:
        log.attach(None)
    failed = [line for line in lines if "failed login for 'alice' from 127.0.0.1" in line]
    assert len(failed) == 5 and failed[0].startswith("W smtp:") and failed[-1].startswith("W pop3:"), lines
    assert "W logins: 127.0.0.1 locked out for %d s after 5 failed logins" % Logins.LOCK_TIME in lines


def support_now():
    import time

    return int(time.time())


def test_parallel_guesses_from_one_address_get_five_verdicts_in_all():
    # Logins in flight at once count too: nothing waits between a verdict
    # and its record, so the sixth verdict finds the address locked. Eight
    # sessions from one address, run at once without a listener (whose
    # per-address cap would not let eight in).
    from gateway.handlers import LanHandler
    from gateway.smtp.server import SMTPSession

    office = Office()
    streams = []
    for i in range(8):
        streams.append(support.ScriptedStream([b"EHLO pc\r\n" + guess("p%d" % i).encode() + b"\r\nQUIT\r\n"]))

    async def main():
        sessions = []
        for s in streams:
            h = LanHandler(office.cfg, office.spool, office.policy)
            sessions.append(SMTPSession(s, s, h, "127.0.0.9", bytearray(600)).run())
        await asyncio.gather(*sessions)

    with support.patched(Logins, DELAY=0):
        support.run(main())
    codes = []
    for s in streams:
        codes.append(int(bytes(s.out).split(b"\r\n")[-3][:3]))  # the reply before QUIT's 221
    codes.sort()
    assert codes == [454] * 3 + [535] * 5, codes


def test_the_record_has_a_fixed_size_and_a_locked_address_outlasts_many_one_time_guessers():
    logins = Logins(clock=lambda: 1000)
    log.attach(lambda line: None)
    try:
        for _ in range(Logins.MAX_FAILURES):
            logins.failed("10.0.0.66", "alice", "smtp")
        for i in range(200):
            logins.failed("10.1.%d.%d" % (i // 250, i % 250), "alice", "pop3")
    finally:
        log.attach(None)
    assert len(logins.addr) == Logins.SLOTS and len(logins.count) == Logins.SLOTS
    assert logins.locked("10.0.0.66") == Logins.LOCK_TIME
    assert logins.locked("10.1.0.199") == 0
    logins.clock = lambda: 1000 + Logins.LOCK_TIME + 1
    assert logins.locked("10.0.0.66") == 0
