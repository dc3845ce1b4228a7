"""kill -9 of the micropython process (FatFs loses what it held in RAM, as
in a power cut) in the middle of mailbox delivery and of POP3's UPDATE:
after the restart nothing acknowledged is lost and nothing is doubled.
The block-level power cut at every write is in tests/firmware/test_mailbox.py."""
import random
import re
import smtplib
import socket
import threading
import time

import pytest

from tests.e2e.test_local import USERS, LocalGateway, firmware_mpy, gateway  # noqa: F401 - fixtures

LOCAL = [f"u{i}@example.test" for i in range(1, 9)]


def message_ids(gw, user):
    """Message-IDs in a mailbox, in order, by POP3 TOP; and the UIDLs."""
    c = gw.pop(user)
    ids = []
    for n in range(1, c.stat()[0] + 1):
        head = b"\n".join(c.top(n, 0)[1])
        m = re.search(rb"Message-ID: <([^>]+)>", head)
        ids.append(m.group(1).decode())
    uidls = [line.split()[1] for line in c.uidl()[1]]
    c.quit()
    return ids, uidls


@pytest.mark.parametrize("rcpts", [LOCAL, ["alice@example.test"]], ids=["hand-off to 8", "straight into one"])
def test_kill_during_mailbox_delivery_loses_and_doubles_nothing(tmp_path, firmware_mpy, rcpts):  # noqa: F811
    # To eight users the message waits in the spool and is copied in; to one
    # it is written into the mailbox by the receiver (its commit is the
    # delivery, and a record cut by the kill is never listed).
    gw = LocalGateway(tmp_path, firmware_mpy)
    rng = random.Random(6)
    acked = []
    sent = []
    boots = []
    try:
        for k in range(8):
            gw.start()
            boots.append("\n".join(gw.lines))
            msgid = f"crash{k}@example.test"
            body = b"Subject: k%d\r\nMessage-ID: <%s>\r\n\r\n" % (k, msgid.encode()) + (b"y" * 76 + b"\r\n") * 1500
            result = {}

            def send():
                try:
                    s = smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=20)
                    s.sendmail("bob@example.test", rcpts, body)
                    result["ok"] = True
                    s.close()
                except (smtplib.SMTPException, OSError):
                    pass

            sent.append(msgid)
            t = threading.Thread(target=send)
            t.start()
            if k % 2:
                t.join(30)  # after the 250: the kill lands in the delivery
                time.sleep(rng.random() * 0.02)
            else:
                time.sleep(rng.random() * 0.3)  # anywhere, DATA included
            gw.crash()
            t.join(30)
            if result.get("ok"):
                acked.append(msgid)
        gw.start()  # boot: spool recovery, then the held local mail is delivered
        boots.append("\n".join(gw.lines))
        # Several kills really landed inside a delivery: the boot finished it.
        finished = [b for b in boots if re.search(r"opened: [1-9]\d* delivered", b)]
        assert len(finished) >= 2 or len(rcpts) == 1, boots
        for addr in rcpts:
            ids, uidls = message_ids(gw, addr.split("@")[0])
            assert len(ids) == len(set(ids)), (addr, ids)  # no duplicates
            assert len(uidls) == len(set(uidls))
            assert set(acked) <= set(ids), (addr, acked, ids)  # nothing acknowledged lost
            assert set(ids) <= set(sent)
        assert len(acked) >= 4
    finally:
        gw.stop()


def test_kill_during_pop3_update_deletes_all_or_nothing(gateway):  # noqa: F811
    gw = gateway
    s = gw.smtp()
    for i in range(30):
        s.sendmail("bob@example.test", ["alice@example.test"],
                   b"Subject: m%d\r\nMessage-ID: <pop%d@example.test>\r\n\r\nhi\r\n" % (i, i))
    s.quit()
    _, before = message_ids(gw, "alice")
    assert len(before) == 30
    outcomes = []
    for delay in (0, 0.001, 0.003, 0.01, 0.03, 0.2):
        c = gw.pop("alice")
        doomed = set(before[: len(before) // 2])
        for n, uid in enumerate(before, 1):
            if uid in doomed:
                c.dele(n)
        # QUIT goes out, and the box dies at some point of the UPDATE.
        c.sock.sendall(b"QUIT\r\n")
        time.sleep(delay)
        gw.crash()
        c.sock.close()
        gw.start()
        _, after = message_ids(gw, "alice")
        assert after in (before, [u for u in before if u not in doomed]), (delay, before, after)
        outcomes.append(len(after) < len(before))
        before = after
    assert any(outcomes)  # at least one UPDATE got through


def test_a_session_cut_without_quit_deletes_nothing(gateway):  # noqa: F811
    gw = gateway
    s = gw.smtp()
    s.sendmail("bob@example.test", ["alice@example.test"], b"Message-ID: <keep@example.test>\r\n\r\nhi\r\n")
    s.quit()
    c = gw.pop("alice")
    c.dele(1)
    c.sock.shutdown(socket.SHUT_RDWR)
    c.sock.close()
    time.sleep(0.2)
    ids, _ = message_ids(gw, "alice")
    assert ids == ["keep@example.test"]
