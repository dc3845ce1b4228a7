# Each phase of the box gives the heap of its code back when it is over: the
# config checks after boot and after each console command, the flush's and
# the pull's code after a poll cycle (docs/heap.md). On CPython dropping a
# module is a no-op (compat.drop_modules), so what was dropped is checked on
# the MicroPython run; both runs check that the phases still do their work.
import sys

import support
from gateway import config
from gateway.mailbox import Mailboxes
from gateway.policy import Policy
from gateway.poll import PollCycle
from gateway.spool import Spool

# Spool, mailboxes, policy and the cycle as .mpy, plus the flush's and the
# pull's code while the cycle runs, and this module from source.
MICROPYTHON_HEAP = "192k"  # scale branch: the store code is ~5 KB bigger and a cycle keeps ~7 KB more; see its report

FLUSH_AND_PULL = ("gateway.outbound", "gateway.smtp.submit", "gateway.dsn", "gateway.smtp.client", "gateway.tls",
                  "gateway.odmr")
# Nothing listens on port 1 of loopback: both connections are refused at once.
NOBODY = {"host": "127.0.0.1", "port": 1, "tls": "none", "user": "office", "secret": "s3cret"}


class Board:
    def now(self):
        return 1000

    def feed_watchdog(self):
        pass


def loaded(names):
    return [n for n in names if n in sys.modules]


def test_a_poll_cycle_leaves_none_of_its_code_loaded():
    root = support.tmpdir()
    cfg = config.validate(dict(support.OFFICE, domains=["example.test"], relay=NOBODY, smarthost=NOBODY))
    spool = Spool(root + "/spool", Board().now)
    spool.recover()
    d = spool.begin("alice@example.test", [("partner@far.test", "out")])
    d.write(b"Subject: out\r\n\r\nhello\r\n")
    queued = d.commit()
    policy = Policy(cfg)
    cycle = PollCycle(cfg, spool, policy, Mailboxes(root + "/mail", policy), Board(), bytearray(4096))
    for _ in range(2):  # the second cycle loads what the first dropped, afresh
        result = support.run(cycle.run())
        assert not result.ok and result.retry, result
        assert "smarthost: sent 0, deferred 1" in result.summary, result.summary
        assert spool.ids("out") == [queued]
        if support.MICROPYTHON:
            assert loaded(FLUSH_AND_PULL) == [], loaded(FLUSH_AND_PULL)


def test_a_console_command_leaves_the_config_checks_unloaded():
    from gateway.console import Console

    class App:
        cfg = config.validate({"domains": ["example.test"]})

        def set_config(self, cfg):
            self.cfg = cfg

    app = App()
    con = Console(app)
    assert con.execute("set smtp.port 2525")[0].startswith("ok")
    assert app.cfg["smtp"]["port"] == 2525
    assert con.execute("set smtp.port 99999") == ["error: smtp.port: must be a port number (1-65535)"]
    assert con.execute("show smtp.port") == ["smtp.port = 2525"]
    if support.MICROPYTHON:
        assert loaded(("gateway.config",)) == []
