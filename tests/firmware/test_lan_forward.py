# Optional forwarding to an internal SMTP host, end to end in one event loop:
# an office PC submits over the LAN listener, the gateway forwards, and the
# "internal host" is the firmware's own SMTP engine writing to a second spool.
import asyncio

import support
from gateway import lan
from gateway.mailbox import Mailboxes
from gateway.policy import Policy
from gateway.smtp.server import Handler, serve
from gateway.spool import Spool

# One process holds the LAN listener, the internal host it forwards to, and
# the test's client, all on one card.
MICROPYTHON_HEAP = "144k"

BODY = b"Subject: fw\r\nMessage-ID: <fw@example.test>\r\n\r\n.leading dot\r\n..two\r\nend\r\n"


class Sink(Handler):
    """The internal host: takes anything except addresses starting "nobody"."""

    def __init__(self, spool):
        self.spool = spool

    def rcpt(self, session, address):
        return (550, "5.1.1 unknown here") if address.startswith("nobody") else "local"


async def listen(start):
    """(server, port): start(port) on a free random loopback port."""
    import random

    for _ in range(50):
        port = random.randrange(20000, 60000)
        try:
            return await start(port), port
        except OSError:
            pass
    raise OSError("no free port")


def smtp_sink(holder):
    return lambda port: serve(lambda: Sink(holder["spool"]), "127.0.0.1", port)


def lan_listener(cfg, spool, policy, boxes):
    return lambda port: lan.serve(cfg, spool, policy, "127.0.0.1", port, boxes.deliver_pending)


def config(sink_port):
    return {
        "users": {
            "alice": {"password": "a", "addresses": ["alice@example.test"]},
            "bob": {"password": "b", "addresses": ["bob@example.test"]},
            "nobody": {"password": "n", "addresses": ["nobody@example.test"]},
        },
        "catch_all": {},
        "smtp": {"allow": ["127.0.0.0/8"]},
        # Port 0 stands for a host that is down: nothing ever listens there.
        "forward": {"bob": "127.0.0.1:%d" % sink_port, "nobody": "127.0.0.1:%d" % sink_port},
    }


async def submit(port, rcpts):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    for line in [b"EHLO pc", b"MAIL FROM:<alice@example.test>"] + [b"RCPT TO:<%s>" % a for a in rcpts] + [b"DATA"]:
        w.write(line + b"\r\n")
    w.write(BODY.replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n")
    await w.drain()
    replies = b""
    while True:
        chunk = await r.read(512)
        if not chunk:
            break
        replies += chunk
    w.close()
    await w.wait_closed()
    return replies


async def settle(spool, seconds=10):
    for _ in range(int(seconds * 20)):
        if not spool.ids("local"):
            return True
        await asyncio.sleep(0.05)
    return False


def body_of(spool, id):
    out = b""
    buf = bytearray(256)
    with spool.open(id) as b:
        while True:
            n = b.readinto(buf)
            if not n:
                return out
            out += bytes(buf[:n])


def setup(sink_port):
    root = support.tmpdir()
    cfg = config(sink_port)
    policy = Policy(cfg)
    spool = Spool(root + "/spool")
    spool.recover()
    boxes = Mailboxes(root + "/mail", policy)
    sink_spool = Spool(root + "/sink")
    sink_spool.recover()
    return cfg, policy, spool, boxes, sink_spool


def test_forwarded_users_go_to_the_internal_host_others_to_mailboxes():
    async def main():
        holder = {}
        sink, sink_port = await listen(smtp_sink(holder))
        cfg, policy, spool, boxes, sink_spool = setup(sink_port)
        holder["spool"] = sink_spool
        srv, port = await listen(lan_listener(cfg, spool, policy, boxes))
        try:
            replies = await submit(port, [b"alice@example.test", b"bob@example.test", b"nobody@example.test"])
            assert replies.count(b"250 2.0.0 OK queued") == 1, replies
            assert await settle(spool)
            [id] = sink_spool.ids("local")
            env = sink_spool.envelope(id)
            assert env.rcpts == [("bob@example.test", "local")] and env.mail_from == "alice@example.test"
            assert body_of(sink_spool, id).endswith(BODY)  # dot-stuffing survived both ways
            assert len(boxes.listing("alice")) == 1
            assert len(boxes.listing("bob")) == 0
            # The internal host refused nobody@: that copy stayed on the box.
            assert len(boxes.listing("nobody")) == 1
        finally:
            srv.close()
            sink.close()

    support.run(main())


def test_a_dead_internal_host_keeps_the_mail_in_the_spool_until_it_is_back():
    async def main():
        holder = {}
        cfg, policy, spool, boxes, sink_spool = setup(0)
        holder["spool"] = sink_spool
        srv, port = await listen(lan_listener(cfg, spool, policy, boxes))
        try:
            await submit(port, [b"bob@example.test"])
            await asyncio.sleep(0.3)
            assert len(spool.ids("local")) == 1 and not boxes.listing("bob")
            # The internal host comes up, on a port the config is then told.
            sink, sink_port = await listen(smtp_sink(holder))
            policy.forwards["bob"] = "127.0.0.1:%d" % sink_port
            try:
                assert await policy.forwarder().flush(spool) == 1
                assert spool.ids("local") == []
                assert len(sink_spool.ids("local")) == 1
            finally:
                sink.close()
        finally:
            srv.close()

    support.run(main())
