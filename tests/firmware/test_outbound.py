# The outbound flush against a scripted smarthost on loopback: a recipient
# leaves the spool only after its 250; 5xx and old age become an RFC 3464
# bounce in the sender's mailbox (queue "local"); 4xx stays, paused.
import support
from gateway import outbound, sasl
from gateway.policy import Policy
from gateway.spool import Spool
from peers import CHALLENGE, Provider

# One process holds the scripted smarthost as well as the box (client, dsn,
# policy, spool as .mpy); the bounce tests also build DSNs on the same card.
MICROPYTHON_HEAP = "208k"
MICROPYTHON_HEAPS = {"test_each_recipient_leaves_only_on_its_250_and_5xx_bounces_to_the_sender": "256k"}

CFG = support.config({
    "hostname": "gw.example.test",
    "domains": ["example.test"],
    "users": {"alice": {"password": "pw", "addresses": ["alice@example.test"]}},
    "poll": {"interval": 900, "bounce_after": 86400},
})
MSG = b"Subject: report\r\nMessage-ID: <m1@example.test>\r\n\r\n.dot line\r\nbye\r\n"
NOW = 1800000000


def _spool(card):
    clock = [NOW]
    sp = Spool(card.root + "/spool", lambda: clock[0])
    return sp, clock


def _put(sp, rcpts, sender="alice@example.test"):
    d = sp.begin(sender, [(a, "out") for a in rcpts])
    d.write(MSG)
    return d.commit()


HELLO = [("send", b"220 smarthost.test ESMTP\r\n"), ("expect", b"EHLO gw.example.test"),
         ("send", [b"250-smarthost.test\r\n250-PIPELINING\r\n250-SI", b"ZE 1000000\r\n250 AUTH CRAM-MD5\r\n"]),
         ("expect", b"AUTH CRAM-MD5"), ("send", b"334 " + CHALLENGE + b"\r\n"), ("auth", None), ("send", b"235 ok\r\n")]

# The one recipient deferred (a 4xx at RCPT), so no DATA: the message stays.
GREYLISTED = HELLO + [("expect", b"MAIL"), ("expect", b"RCPT"), ("expect", b"DATA"),
                      ("send", b"250 ok\r\n451 4.7.1 greylisted\r\n503 no valid recipients\r\n"), ("expect", b"RSET"),
                      ("send", b"250 ok\r\n"), ("expect", b"QUIT"), ("send", b"221 bye\r\n")]


def _flush(sp, clock, script, retry=None, bufs=(None, None), cut=0):
    """One flush against the scripted smarthost; with `cut`, on a heap cut
    into holes of that many bytes."""
    import asyncio

    provider = Provider(script)

    async def main():
        server, port = await support.start_server(provider.handle)
        try:
            cfg = dict(CFG)
            cfg["smarthost"] = {"host": "127.0.0.1", "port": port, "tls": "none", "user": "office", "secret": "s3cret"}
            out = outbound.Outbound(cfg, sp, Policy(cfg), lambda: clock[0], retry, bufs)
            held = cut and support.cut_heap(cut)
            if cut:
                with support.raises(MemoryError):
                    bytearray(2 * cut)
            summary = await out.flush()
            held = None
            if provider.connected:
                await asyncio.wait_for(provider.finished.wait(), 10)
            return summary
        finally:
            server.close()
            await server.wait_closed()

    return support.run(main()), provider, sp


def _read(sp, id):
    buf = bytearray(8192)
    with sp.open(id) as body:
        n = body.readinto(buf)
    return bytes(buf[:n])


def test_each_recipient_leaves_only_on_its_250_and_5xx_bounces_to_the_sender():
    card = support.Card()
    sp, clock = _spool(card)
    first = _put(sp, ["a@x.test", "b@x.test", "c@x.test"])
    script = HELLO + [
        ("expect", b"MAIL FROM:<alice@example.test> SIZE=%d" % len(MSG)), ("expect", b"RCPT TO:<a@x.test>"),
        ("expect", b"RCPT TO:<b@x.test>"), ("expect", b"RCPT TO:<c@x.test>"), ("expect", b"DATA"),
        ("send", b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n451 4.3.0 try later\r\n354 go\r\n"),
        ("expect", b"Subject: report"), ("expect", b"Message-ID"), ("expect", b""), ("expect", b"..dot line"),
        ("expect", b"bye"), ("expect", b"."), ("send", b"250 2.0.0 queued\r\n"), ("expect", b"QUIT"), ("send", b"221 bye\r\n")]
    summary, provider, sp = _flush(sp, clock, script)
    assert not provider.problems and provider.done, provider.problems
    assert summary.deferred == 1 and summary.bounced == 0 and summary.error is None, str(summary)
    # a@ got its 250, b@ bounced, c@ waits.
    assert support.rcpts(sp.envelope(first)) == [("c@x.test", "out")]
    bounces = sp.ids("local")
    assert len(bounces) == 1
    env = sp.envelope(bounces[0])
    assert env.mail_from == "" and support.rcpts(env) == [("alice@example.test", "local")]
    report = _read(sp, bounces[0])
    assert b"Content-Type: multipart/report; report-type=delivery-status" in report
    assert b"Final-Recipient: rfc822; b@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\n" in report
    assert b"Diagnostic-Code: smtp; 550 5.1.1 no such user" in report
    assert b"a@x.test" not in report and b"c@x.test" not in report
    assert b"Content-Type: text/rfc822-headers\r\n\r\nSubject: report\r\nMessage-ID: <m1@example.test>\r\n\r\n--" in report
    assert b"dot line" not in report


def test_a_4xx_waits_its_pause_then_goes():
    card = support.Card()
    sp, clock = _spool(card)
    id = _put(sp, ["c@x.test"])
    summary, provider, sp = _flush(sp, clock, GREYLISTED)
    assert not provider.problems, provider.problems
    assert summary.deferred == 1 and sp.ids("out") == [id]


def test_past_pauses_kept_a_deferred_message_is_simply_tried_again():
    # A smarthost deferring 10,000 one by one must not fill the heap with
    # their pauses: past PAUSES, one is tried at the next flush instead.
    card = support.Card()
    sp, clock = _spool(card)
    id = _put(sp, ["c@x.test"])
    retry = {"0000ffff": (1, NOW + 300)}  # one pause already kept
    with support.patched(outbound.Outbound, PAUSES=1):
        summary, provider, sp = _flush(sp, clock, GREYLISTED, retry)
    assert not provider.problems, provider.problems
    assert summary.deferred == 1 and sp.ids("out") == [id] and list(retry) == ["0000ffff"]


def test_smarthost_down_keeps_everything_and_says_so():
    card = support.Card()
    sp, clock = _spool(card)
    id = _put(sp, ["a@x.test"])
    script = [("send", b"421 4.3.2 shutting down\r\n")]
    summary, provider, sp = _flush(sp, clock, script)
    assert summary.deferred == 1 and "421" in summary.error and summary.temporary
    assert sp.ids("out") == [id] and not sp.ids("local")


def test_a_dropped_line_mid_data_keeps_the_message():
    card = support.Card()
    sp, clock = _spool(card)
    id = _put(sp, ["a@x.test"])
    script = HELLO + [("expect", b"MAIL"), ("expect", b"RCPT"), ("expect", b"DATA"),
                      ("send", b"250 ok\r\n250 ok\r\n354 go\r\n"), ("expect", b"Subject"), ("close", None)]
    summary, provider, sp = _flush(sp, clock, script)
    assert summary.deferred == 1 and summary.error
    assert support.rcpts(sp.envelope(id)) == [("a@x.test", "out")]


def test_too_old_is_bounced_without_trying_and_a_bounce_never_bounces():
    card = support.Card()
    sp, clock = _spool(card)
    old = _put(sp, ["a@x.test"])
    null = _put(sp, ["b@x.test"], sender="")
    clock[0] = NOW + 2 * 86400
    summary, provider, sp = _flush(sp, clock, [])
    assert not provider.connected and summary.bounced == 1 and summary.dropped == 1
    assert sp.ids("out") == []
    bounces = sp.ids("local")
    assert len(bounces) == 1  # only alice's: the null sender gets none
    report = _read(sp, bounces[0])
    assert b"Status: 4.4.7" in report and b"Final-Recipient: rfc822; a@x.test" in report
    assert old and null


def test_a_flush_walks_the_queue_a_batch_at_a_time():
    # With 10,000 waiting, one list of every id would not fit the heap: the
    # flush lists BATCH at a time and still counts every message.
    card = support.Card()
    sp, clock = _spool(card)
    ids = [_put(sp, ["r%d@x.test" % n]) for n in range(10)]
    asked = []
    real = sp.ids
    sp.ids = lambda queue, after="", limit=0: asked.append(limit) or real(queue, after, limit)
    with support.patched(outbound.Outbound, BATCH=3):
        summary, provider, sp = _flush(sp, clock, [("send", b"421 4.3.2 shutting down\r\n")])
    assert summary.deferred == 10 and "421" in summary.error
    assert len(asked) == 5 and all(n == 3 for n in asked)  # 3, 3, 3, 1, then none left
    assert real("out") == ids


def test_a_flush_on_a_cut_up_heap_with_the_buffers_the_poll_lends():
    # Issue 11: at 160k the office day's flush failed at its first message
    # (MemoryError allocating 1024 bytes): the client made its body buffer
    # then, on a heap the sessions had cut up. The poll now lends the
    # client its buffers, made at start.
    card = support.Card()
    sp, clock = _spool(card)
    sp.recover()  # the spool's reading side loaded, as on a running box
    id = _put(sp, ["a@x.test"])
    script = HELLO + [
        ("expect", b"MAIL"), ("expect", b"RCPT"), ("expect", b"DATA"),
        ("send", b"250 ok\r\n250 ok\r\n354 go\r\n"), ("expect", b"Subject: report"), ("expect", b"Message-ID"),
        ("expect", b""), ("expect", b"..dot line"), ("expect", b"bye"), ("expect", b"."), ("send", b"250 queued\r\n"),
        ("expect", b"QUIT"), ("send", b"221 bye\r\n"),
    ]
    summary, provider, sp = _flush(sp, clock, script, bufs=(bytearray(4096), bytearray(1024)), cut=128 * support.WORD)
    assert not provider.problems and provider.done, provider.problems
    assert summary.sent == 1 and summary.error is None, str(summary)
    assert sp.ids("out") == [] and id
    card.unmount()
