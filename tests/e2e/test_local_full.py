"""A full card, filled both ways on a small card image: from the LAN with
smtplib, and by an ODMR pull from the project's relay. The box refuses what
it cannot store (452), restarts and serves POP3 on the full card, DELE +
QUIT frees room, and everything that got a 250 is delivered byte for byte."""
import smtplib
import subprocess

from tests.e2e.test_local import ODMRGW, LocalGateway, firmware_mpy  # noqa: F401 - the fixture
from tests.e2e.test_odmr_pull import Setup, message

CARD = "4M"
BIG = 100_000  # bytes of body a message


def lan_message(n, to):
    body = b"".join(b"%05d %s\r\n" % (i, b"f" * 72) for i in range(BIG // 80))
    return b"Subject: full %d\r\nTo: %s\r\nMessage-ID: <full%d@example.test>\r\n\r\n%s" % (n, to.encode(), n, body)


def retr_all(gw, user):
    """{Subject number: the message as sent} of what POP3 shows (from its
    Subject line on: the box puts Return-Path and Received above)."""
    c = gw.pop(user)
    got = {}
    for n in range(1, c.stat()[0] + 1):
        text = b"\r\n".join(c.retr(n)[1]) + b"\r\n"
        text = text[text.index(b"Subject: full ") :]
        got[int(text[14 : text.index(b"\r\n")])] = text
    c.quit()
    return got


def send_until_refused(gw, first, rcpts, most=200):
    accepted = []
    n = first
    while n < first + most:
        s = smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=30)
        try:
            s.sendmail("pc@example.test", rcpts, lan_message(n, rcpts[0]))
            accepted.append(n)
        except (smtplib.SMTPDataError, smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused) as e:
            code = getattr(e, "smtp_code", None) or next(iter(e.recipients.values()))[0]
            assert code == 452, e
            s.quit()
            return accepted
        s.quit()
        n += 1
    assert most < 200, "the card never filled"
    return accepted


def test_lan_fills_the_card_and_nothing_accepted_is_lost(tmp_path, firmware_mpy):
    gw = LocalGateway(tmp_path, firmware_mpy)
    gw.image.unlink()
    subprocess.run([ODMRGW, "sd", "mkfs", gw.image, "--size", CARD], check=True, capture_output=True)
    try:
        gw.start()
        shared = send_until_refused(gw, 0, ["alice@example.test", "bob@example.test"], 5)
        alone = send_until_refused(gw, 100, ["alice@example.test"])
        assert shared and alone
        # A full card never stops the box: it restarts and serves POP3.
        gw.stop()
        gw.start()
        alice = retr_all(gw, "alice")
        assert sorted(alice) == sorted(shared + alone)
        for n, text in alice.items():
            assert text == lan_message(n, "alice@example.test")
        assert sorted(retr_all(gw, "bob")) == shared
        # DELE + QUIT frees room, and the LAN is taken again.
        c = gw.pop("alice")
        for n in range(1, 4):
            c.dele(n)
        assert c.quit().startswith(b"+OK")
        more = send_until_refused(gw, 300, ["alice@example.test"])
        assert more
        alice = retr_all(gw, "alice")
        assert sorted(alice) == sorted(shared + alone + more)[3:]
        assert not [line for line in gw.lines if line.startswith("E ")]
    finally:
        gw.stop()


def test_a_pull_fills_the_card_and_the_rest_comes_after_room_is_freed(tmp_path, firmware_mpy):
    setup = Setup(tmp_path)
    try:
        setup.image.unlink()
        subprocess.run([ODMRGW, "sd", "mkfs", setup.image, "--size", CARD], check=True, capture_output=True)
        setup.inject(40, size=BIG)
        setup.config()
        r = setup.once(firmware_mpy)
        assert r.returncode in (0, 1), r.stdout + r.stderr
        left = setup.queued()
        assert 0 < left < 40  # the card filled: the relay keeps what got no 250
        box = setup.mailbox()
        assert len(box) == 40 - left
        # Room is freed with POP3 (the box as the office runs it), then the
        # next pull brings the rest.
        (tmp_path / "pop").mkdir()
        gw = LocalGateway(tmp_path / "pop", firmware_mpy)
        gw.image = setup.image
        gw.start()
        try:
            c = gw.pop("alice")
            count = c.stat()[0]
            for n in range(1, count + 1):
                c.dele(n)
            assert c.quit().startswith(b"+OK")
        finally:
            gw.stop()
        r = setup.once(firmware_mpy)
        assert r.returncode == 0, r.stdout + r.stderr
        assert setup.queued() == 0
        got = setup.mailbox()
        want = {i: message(i, BIG).replace("\r\n", "\n").encode() for i in range(40)}
        subjects = sorted(int(m.split(b"Subject: m", 1)[1].split(b"\n", 1)[0]) for m in got)
        assert subjects == sorted(set(range(40)) - {int(m.split(b"Subject: m", 1)[1].split(b"\n", 1)[0]) for m in box})
        for m in got:
            i = int(m.split(b"Subject: m", 1)[1].split(b"\n", 1)[0])
            assert m.endswith(want[i].split(b"\n\n", 1)[1])
    finally:
        setup.close()
