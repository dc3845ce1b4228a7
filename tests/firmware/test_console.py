# The serial console's commands against a real App (on a stand-in board with
# a plain directory as its card), and the Ctrl-A/C/D hand-over to the REPL.
import json
import os

import support
from support import raises, run, tmpdir, ScriptedStream
from gateway import config, log
from gateway.app import App
from gateway.console import Console
from gateway.logring import LogRing

# The test process holds the app, console, config and logring (as .mpy) plus
# this module compiled from source, on 8-byte pointers: 80k was the edge,
# and `set` ran out there once the config learnt smtp.cert/key and
# clear_text_logins (issue 12), and loads the cross-key checks
# (gateway.configcheck) while it validates; 84k passed, 88k gives a margin.
MICROPYTHON_HEAP = "88k"
# and this one adds the spool, mailbox, policy and SMTP engine on a real card,
# plus the ODMR line's buffer the app makes first. 144k was its bare minimum:
# one more attribute in support.py (compiled from source in this process)
# left no 4 KB block for that buffer, so it gets a margin.
MICROPYTHON_HEAPS = {"test_app_on_a_real_card_shows_spool_and_mailboxes": "160k"}


class DeskBoard:
    """The Board interface with nothing behind it but a directory."""

    name = "desk"
    card_problem = None

    def __init__(self):
        self.sd_root = tmpdir()
        self.started = 1000
        self.clock = 1100
        self.reboots = 0

    def now(self):
        return self.clock

    def network_status(self):
        return "none (test)"

    def feed_watchdog(self):
        pass

    def card_free(self):
        return 3 << 20

    def card_size(self):
        return 4 << 20

    def reboot(self):
        self.reboots += 1


def make_console():
    path = tmpdir() + "/config.json"
    config.save(path, {"domains": ["example.test"], "relay": {"host": "relay.test", "secret": "hush"}})
    app = App(DeskBoard(), config.load(path), path)
    return Console(app), app


def test_help_lists_every_command():
    con, _ = make_console()
    text = "\n".join(con.execute("help"))
    for cmd in ("status", "show", "set", "unset", "save", "poll", "queue", "log", "user add", "user del",
                "user passwd", "reboot", "factory-reset"):
        assert cmd in text, cmd
    assert con.execute("frobnicate") == ["error: unknown command 'frobnicate'; try help"]


def test_show_never_prints_a_secret():
    con, _ = make_console()
    out = "\n".join(con.execute("show") + con.execute("show relay") + con.execute("show relay.secret"))
    assert "hush" not in out
    assert 'relay.secret = "***"' in out
    assert 'relay.host = "relay.test"' in out
    assert con.execute("show relay.port") == ["relay.port = 366"]


def test_set_checks_at_once_and_save_persists():
    con, app = make_console()
    assert con.execute("set smtp.max_size lots") == ["error: smtp.max_size: must be a positive integer"]
    assert con.execute("set smtp.prot 25") == ["error: smtp.prot: unknown key"]
    assert con.execute("set poll.interval 60")[0].startswith("ok")
    assert app.cfg["poll"]["interval"] == 60
    assert "unsaved" in dict(app.status())["config"]
    assert config.load(app.cfg_path)["poll"]["interval"] == 900
    con.execute("save")
    assert config.load(app.cfg_path)["poll"]["interval"] == 60
    con.execute("set hostname gw.example.test")
    con.execute("unset poll.interval")
    con.execute("save")
    saved = config.load(app.cfg_path)
    assert saved["hostname"] == "gw.example.test" and saved["poll"]["interval"] == 900


def test_user_add_passwd_del():
    con, app = make_console()
    assert con.execute("user add alice pw1 alice@example.test info@example.test")[0].startswith("ok")
    assert app.cfg["users"]["alice"] == {"password": "pw1", "addresses": ["alice@example.test", "info@example.test"], "quota": 0}
    assert con.execute("user add alice x")[0].startswith("error: user alice exists")
    con.execute("user passwd alice pw2")
    assert app.cfg["users"]["alice"]["password"] == "pw2"
    assert "pw2" not in json.dumps(con.execute("show users"))
    assert con.execute("user add bob pw bob")[0] == "error: users.bob.addresses: 'bob' is not an address (user@domain)"
    con.execute("user del alice")
    assert app.cfg["users"] == {}
    assert con.execute("user del alice") == ["error: no such user 'alice'"]
    assert con.execute("user") == ["error: usage: see help"]
    assert con.execute("set smtp.port") == ["error: usage: see help"]


def test_factory_reset_asks_first():
    con, app = make_console()
    assert "type yes" in con.execute("factory-reset")[0]
    assert con.execute("no") == ["cancelled"]
    assert app.cfg["relay"]["host"] == "relay.test"
    con.execute("factory-reset")
    assert con.execute("yes") == ["config erased"]
    assert app.cfg["relay"]["host"] == ""
    assert not os.path.exists(app.cfg_path) if hasattr(os, "path") else True


def test_status_reboot_and_log():
    con, app = make_console()
    status = dict(app.status())
    assert status["uptime"] == "100s"
    assert status["network"] == "none (test)"
    assert status["card"].endswith("3072 of 4096 KiB free")
    assert "not running" in con.execute("poll")[0]
    app.ring = LogRing(app.board.sd_root + "/log.txt")
    log.attach(app.ring.write, app.board.now)
    try:
        for i in range(30):
            log.info("line %d" % i)
    finally:
        log.attach(None)
    tail = con.execute("log 3")
    assert tail == ["1970-01-01T00:18:20Z I line 27", "1970-01-01T00:18:20Z I line 28", "1970-01-01T00:18:20Z I line 29"], tail
    assert len(con.execute("log")) == Console.LOG_LINES
    con.execute("reboot")
    assert app.board.reboots == 1


def test_log_ring_stays_within_its_cap():
    d = tmpdir()
    ring = LogRing(d + "/log.txt", size=2048)
    for i in range(500):
        ring.write("message number %d" % i)
    ring.close()
    total = sum(os.stat(d + "/" + name)[6] for name in os.listdir(d))
    assert total <= 2048 + 40, total
    tail = ring.tail(5)
    assert tail == ["message number %d" % i for i in range(495, 500)]
    assert ring.tail(1000)[0].startswith("message number")


def test_info_lines_wait_for_the_flush_and_a_warning_is_synced_at_once():
    # A sync per log line was one of the two a LAN message cost (issue 16).
    support.needs_micropython()
    card = support.Card()
    dev = card.board.dev
    ring = LogRing(card.root + "/log.txt")
    log.attach(ring.write, None, ring.flush)
    try:
        before = dev.syncs
        for i in range(20):
            log.info("delivered %d" % i)
        assert dev.syncs == before, "an info line synced the card"
        log.warn("relay refused the login")
        assert dev.syncs == before + 1
        log.info("one more")
        ring.flush()
        ring.flush()  # nothing new: no second sync
        assert dev.syncs == before + 2
    finally:
        log.attach(None)
        ring.close()
    # Power off and on: the warning and what was flushed are on the card.
    card = card.remount()
    try:
        lines = LogRing(card.root + "/log.txt").tail(3)
        assert lines == ["I delivered 19", "W relay refused the login", "I one more"], lines
    finally:
        card.unmount()


def test_typed_line_runs_and_ctrl_c_hands_over_to_the_repl():
    con, _ = make_console()
    out = []
    stream = ScriptedStream([b"show relay.p", b"x\x7fort\r\n", b"\r\x03\r\x01"])
    with raises(KeyboardInterrupt):
        run(con.run(stream, out.append))
    text = "".join(out)
    assert "relay.port = 366\r\n" in text
    assert text.count("gw> ") == 3  # CRLF counts as one line end
    # the bytes after Ctrl-C are left for MicroPython's REPL (mpremote's Ctrl-A)
    assert stream.chunks == [b"\r\x01"]


def test_ctrl_a_and_ctrl_d_also_hand_over_and_eof_just_ends():
    for key in (b"\x01", b"\x04"):
        con, _ = make_console()
        with raises(KeyboardInterrupt):
            run(con.run(ScriptedStream([b"help", key]), lambda s: None))
    # EOF after a command: the answer is out, the prompt is back, and the
    # console returns instead of raising (the gateway serves on).
    con, _ = make_console()
    out = []
    assert run(con.run(ScriptedStream([b"status\n"]), out.append)) is None
    text = "".join(out)
    assert "uptime" in text and text.endswith("gw> "), text


def test_app_on_a_real_card_shows_spool_and_mailboxes():
    from support import Card

    card = Card()
    try:
        con, app = make_console()
        app.board.sd_root = card.root
        app.cfg["users"] = {"alice": {"password": "pw", "addresses": ["alice@example.test"], "quota": 0}}
        app.open_card()
        draft = app.spool.begin("bob@outside.example", [("carol@far.example", "out")])
        draft.write(b"Subject: x\r\n\r\nhello\r\n")
        id = draft.commit()
        status = dict(app.status())
        assert status["queue"] == "0 for local delivery, 1 outgoing", status
        assert status["mailboxes"].startswith("alice 0"), status
        lines = con.execute("queue")
        assert len(lines) == 1 and id in lines[0] and "carol@far.example" in lines[0] and "<bob@outside.example>" in lines[0]
        assert con.execute("poll") == ["error: the poll scheduler is not running (see `log`)"]
    finally:
        card.unmount()
