"""`odmrgw demo` as a new user runs it: it never removes what it did not
make, `kill` stops everything it started, and what it prints works (the
passwords, the fetchmail command, fixed ports)."""
import contextlib
import email
import poplib
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest

from host_tools import demo
from tests.conftest import REPO

ODMRGW = [sys.executable, "-m", "host_tools", "demo"]


def run_demo(*args, timeout=300):
    return subprocess.run([*ODMRGW, *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=timeout)


def test_refuses_a_directory_that_is_not_a_demos(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    (tmp_path / "card.img").write_text("not the demo's either")
    proc = run_demo("--once", "--dir", tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"--dir {tmp_path}: not empty and not a demo's directory" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.img", "thesis.tex"]


def test_an_earlier_demo_directory_loses_only_the_demos_files(tmp_path):
    (tmp_path / demo.MARK).write_text("")
    (tmp_path / "gateway.log").write_text("an old run\n")
    (tmp_path / "mine.txt").write_text("put here by the user")
    proc = run_demo("--once", "--dir", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "mine.txt").read_text() == "put here by the user"
    assert "an old run" not in (tmp_path / "gateway.log").read_text()


def five_free_ports():
    for _ in range(20):
        base = 20000 + (int(time.monotonic_ns()) % 20000)
        socks = []
        try:
            for port in range(base, base + 5):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    pytest.skip("no five free ports in a row")


@contextlib.contextmanager
def serving_demo(*args):
    """The demo up to its "Ctrl-C stops both." line: (process, what it
    printed, its lines). Killed afterwards if it is still running."""
    proc = subprocess.Popen([*ODMRGW, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO)
    out = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if line.startswith("Ctrl-C stops both."):
                break
        text = "".join(out)
        assert "Ctrl-C stops both." in text, text
        yield proc, text, out
    finally:
        if proc.poll() is None:
            proc.terminate()  # not kill: the demo's relay and board must go with it
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def assert_closed(*ports):
    for port in ports:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), 2).close()


def test_demo_keeps_serving_until_ctrl_c_then_stops_everything(tmp_path):
    with serving_demo("--dir", tmp_path / "demo") as (proc, text, _):
        pop3 = int(re.search(r"over POP3 on 127\.0\.0\.1:(\d+)", text).group(1))
        # the office PC's note went through the gateway's LAN listener to bob's mailbox
        assert re.search(r"bob: \d+ message\(s\)", text) and "Team meeting" in text
        box = poplib.POP3("127.0.0.1", pop3, timeout=30)
        box.user("bob")
        box.pass_("bob-pw")
        assert box.stat()[0] >= 1
        box.quit()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    assert_closed(pop3)


def test_kill_stops_everything_and_the_printed_steps_work(tmp_path):
    base = five_free_ports()
    work = tmp_path / "demo"
    with serving_demo("--dir", work, "--ports", base) as (proc, text, out):
        assert f"over POP3 on 127.0.0.1:{base + 1}" in text and f"inbound SMTP {base + 2}" in text
        for user, (pw, _) in demo.USERS.items():
            assert f"{user} / {pw}" in text
        assert f"{demo.ACCOUNT[0]} / {demo.ACCOUNT[1]}" in text
        box = poplib.POP3("127.0.0.1", base + 1, timeout=30)
        box.user("bob")
        box.pass_("bob-pw")
        head = email.message_from_bytes(b"\r\n".join(box.top(1, 0)[1]))
        box.quit()
        assert head["Date"] and head["Message-ID"]
        # the fetchmail line it prints, as printed
        command = next(line.strip().split("   (")[0] for line in out if line.strip().startswith("fetchmail -f"))
        fetch = subprocess.run(shlex.split(command) + ["-N", "-d0", "--nosyslog"], capture_output=True, text=True,
                               timeout=120)
        assert fetch.returncode == 0, fetch.stdout + fetch.stderr
        mbox = (work / "bob.mbox").read_text()
        assert mbox.startswith("From ") and len(re.findall(r"^From ", mbox, re.M)) == len(
            re.findall(r"^Subject: ", mbox, re.M)) >= 2
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert_closed(*range(base, base + 5))
    log = (work / "gateway.log").read_text()
    assert "gw> " not in log
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ I simulated board up", log, re.M), log
