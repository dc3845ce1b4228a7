# Optional forwarding to an internal SMTP host, end to end in one event loop:
# an office PC submits over the LAN listener, the gateway forwards, and the
# "internal host" is the firmware's own SMTP engine writing to a second spool.
import asyncio

import support

# Validated before the firmware's modules load, as the box does at boot: the
# validator's code is dropped again and its room goes to what follows.
BASE = support.config({
    "users": {
        "alice": {"password": "a", "addresses": ["alice@example.test"]},
        "bob": {"password": "b", "addresses": ["bob@example.test"]},
        "nobody": {"password": "n", "addresses": ["nobody@example.test"]},
    },
    "catch_all": {},
    "smtp": {"allow": ["127.0.0.0/8"]},
})

from gateway import lan  # noqa: E402
from gateway.forward import Forwarder  # noqa: E402
from gateway.mailbox import Mailboxes  # noqa: E402
from gateway.policy import Policy  # noqa: E402
from gateway.smtp.server import Handler, serve  # noqa: E402
from gateway.spool import Spool  # noqa: E402

# One process holds the LAN listener, the internal host it forwards to, and
# the test's client, all on one card: 144k with a partial config and the
# forwarder's own small client; 176k with the validated config the box
# holds and the one SMTP client (TLS and AUTH steps included) loaded for
# the flush; 184k since each SMTP session holds a recipient table made at
# its full size (816 bytes on the 64-bit build, 416 on the ESP32); 192k
# since the DATA path's code grew by 825 bytes (its sector holding and the
# viper search for a read's last line end), which made 184k fail under load.
MICROPYTHON_HEAP = "192k"

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
    """BASE with both forwarded users on the internal host at sink_port."""
    cfg = dict(BASE)
    cfg["forward"] = {"bob": "127.0.0.1:%d" % sink_port, "nobody": "127.0.0.1:%d" % sink_port}
    return cfg


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


def setup(sink_port):
    root = support.tmpdir()
    cfg = config(sink_port)
    policy = Policy(cfg)
    spool = Spool(root + "/spool")
    spool.recover()
    boxes = Mailboxes(root + "/mail", policy)
    # As the App wires it: the hand-off starts the forwarder, which gives
    # what a host refuses back to the mailboxes.
    boxes.on_forward = Forwarder(cfg, policy, boxes).kick
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
            assert support.rcpts(env) == [("bob@example.test", "local")] and env.mail_from == "alice@example.test"
            assert support.read_body(sink_spool, id).endswith(BODY)  # dot-stuffing survived both ways
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
        cfg, policy, spool, boxes, sink_spool = setup(1)  # port 1: a host that is down
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
                assert await Forwarder(cfg, policy, boxes).flush(spool) == 1
                assert spool.ids("local") == []
                assert len(sink_spool.ids("local")) == 1
            finally:
                sink.close()
        finally:
            srv.close()

    support.run(main())
