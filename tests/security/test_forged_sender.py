# Attacks that send mail as someone else through the box.
import support
from attacker import Office, attack, send
from gateway import log, sasl

# Both listeners, the spool and the test's clients (compiled from source)
# in one process; the box's own budget is the budget suite's (docs/heap.md).
MICROPYTHON_HEAP = "256k"


def test_an_authenticated_user_sends_only_from_their_own_addresses():
    # Issue 12, 5: alice, logged in, gave MAIL FROM:<ceo@bigbank.example>
    # (or bob's address) and got 250; the relay refused the mail later and
    # the box dropped it, with a log line only.
    office = Office()

    async def script(o):
        c = await o.smtp()
        assert (await c.cmd("AUTH PLAIN " + sasl.plain_response("alice", "alice-pw").decode()))[0] == 235
        for forged in ("ceo@bigbank.example", "bob@example.test", "", "alice@example.test.evil"):
            code, lines = await c.cmd("MAIL FROM:<%s>" % forged)
            assert code == 553 and lines[0].startswith("5.7.1 alice may send only from their own addresses"), (forged, code)
        assert await send(c, "Alice@Example.TEST", ["victim@outside.test"]) == [250, 250, 250]
        await c.close()

    attack(office, script)
    (id,) = office.spool.ids("out")
    assert office.spool.envelope(id).mail_from == "Alice@Example.TEST"


def test_a_failure_with_no_mailbox_to_report_to_is_counted_as_dropped_not_bounced():
    # The cycle summary said "bounced 1" for a message that nothing bounced.
    from gateway.outbound import Outbound

    office = Office()
    now = [1800000000]
    office.spool.clock = lambda: now[0]
    for sender in ("alice@example.test", "ceo@bigbank.example"):  # the second one queued before the check at MAIL
        d = office.spool.begin(sender, [("victim@outside.test", "out")])
        d.write(b"Subject: hi\r\n\r\nhello\r\n")
        d.commit()
    now[0] += 30 * 86400  # past poll.bounce_after: given up without trying
    lines = []
    log.attach(lines.append)
    try:
        summary = support.run(Outbound(office.cfg, office.spool, office.policy, lambda: now[0]).flush())
    finally:
        log.attach(None)
    assert (summary.bounced, summary.dropped) == (1, 1)
    assert str(summary) == "sent 0, deferred 0, bounced 1, dropped 1 (no mailbox for the sender, see the log)"
    assert [line for line in lines if "dropped: sender ceo@bigbank.example has no mailbox" in line], lines
    (bounce,) = office.spool.ids("local")
    assert office.spool.envelope(bounce).rcpts == [("alice@example.test", "local")]
