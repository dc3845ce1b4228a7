"""Local delivery throughput: a 4 MB message submitted over the LAN listener
and fetched over POP3 from the firmware on micropython (simulated card),
against peers in the same run: aiosmtpd taking the same submission, and the
same POP3 code on CPython serving from a host directory."""
import asyncio
import poplib
import smtplib
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.e2e.test_local import USERS, LocalGateway, compile_firmware, free_port

LINES = 50_000  # of 80 bytes: 4 MB
MESSAGE = b"Subject: bench\r\nMessage-ID: <bench@example.test>\r\n\r\n" + b"".join(
    b"%06d %s\r\n" % (i, b"b" * 71) for i in range(LINES))


def timed(fn):
    t0 = time.monotonic()
    fn()
    return max(time.monotonic() - t0, 1e-6)


def submit(port):
    s = smtplib.SMTP("127.0.0.1", port, timeout=120)
    s.sendmail("bob@example.test", ["alice@example.test"], MESSAGE)
    s.quit()


def fetch(port):
    c = poplib.POP3("127.0.0.1", port, timeout=120)
    c.user("alice")
    c.pass_(USERS["alice"])
    lines = c.retr(1)[1]
    c.quit()
    assert len(lines) >= LINES


def aiosmtpd_seconds():
    from aiosmtpd.controller import Controller

    class Sink:
        async def handle_DATA(self, server, session, envelope):
            return "250 OK"

    port = free_port()
    ctl = Controller(Sink(), hostname="127.0.0.1", port=port, data_size_limit=0)
    ctl.start()
    try:
        return timed(lambda: submit(port))
    finally:
        ctl.stop()


def cpython_pop3_seconds(tmp):
    """The firmware's POP3 server and mailbox on CPython, in a thread."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "firmware"))
    from gateway import config, pop3
    from gateway.mailbox import Mailboxes
    from gateway.policy import Policy
    from gateway.spool import Spool

    cfg = config.validate({"users": {"alice": {"password": USERS["alice"], "addresses": ["alice@example.test"]}},
                           "smtp": {"allow": ["127.0.0.0/8"]}})  # POP3 takes the LAN listener's allow list
    spool = Spool(tmp + "/spool")
    spool.recover()
    boxes = Mailboxes(tmp + "/mail", Policy(cfg))
    d = spool.begin("bob@example.test", [("alice@example.test", "local")])
    d.write(MESSAGE)
    d.commit()
    boxes.deliver_pending(spool)
    loop = asyncio.new_event_loop()
    srv = loop.run_until_complete(pop3.serve(cfg, boxes, "127.0.0.1", 0))
    threading.Thread(target=loop.run_forever, daemon=True).start()
    try:
        return timed(lambda: fetch(srv.sockets[0].getsockname()[1]))
    finally:
        loop.call_soon_threadsafe(srv.close)
        loop.call_soon_threadsafe(loop.stop)


def run(report):
    mb = len(MESSAGE) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        gw = LocalGateway(tmp_path, compile_firmware(tmp_path / "mpy"))
        gw.start()
        try:
            smtp_s = timed(lambda: submit(gw.smtp_port))
            gw.wait_for("DELIVERED", timeout=120)
            pop_s = timed(lambda: fetch(gw.pop3_port))
        finally:
            gw.stop()
        peer_smtp = aiosmtpd_seconds()
        (tmp_path / "cpy").mkdir()
        peer_pop = cpython_pop3_seconds(str(tmp_path / "cpy"))
    report("LAN SMTP submit, micropython + card", f"{mb / smtp_s:.1f} MB/s", "spooled and delivered to the mailbox")
    report("SMTP submit to aiosmtpd (CPython, discards)", f"{mb / peer_smtp:.1f} MB/s")
    report("ratio gateway / aiosmtpd", f"{peer_smtp / smtp_s:.2f}x")
    report("POP3 RETR, micropython + card", f"{mb / pop_s:.1f} MB/s", "streamed, dot-stuffed")
    report("POP3 RETR, same code on CPython + host disk", f"{mb / peer_pop:.1f} MB/s")
    report("ratio micropython / CPython", f"{peer_pop / pop_s:.2f}x")
