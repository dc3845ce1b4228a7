"""The configuration console over a pty, as a person (or a script) at the
box's USB port would use it: `odmrgw console --port PTY COMMAND`."""
import json
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.host import simboard


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    # the provider is a closed loopback port: every poll fails at once
    relay = {"host": "127.0.0.1", "port": simboard.free_port(), "tls": "none", "secret": "hush-hush"}
    board = simboard.start(tmp_path_factory.mktemp("console"), {"domains": ["example.test"], "relay": relay})
    yield board
    board.close()


def run_console(sim, *words):
    return subprocess.run([sys.executable, "-m", "host_tools", "console", "--port", str(sim.link), *words],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def console(sim, *words):
    proc = run_console(sim, *words)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_status_shows_the_board(sim):
    out = console(sim, "status")
    assert "odmrgw" in out and "board unix" in out
    for label in ("uptime", "network", "card", "heap", "config"):
        assert label in out, out
    cfg = json.loads((sim.link.parent / "flash" / "config.json").read_text())
    assert f"listening smtp 127.0.0.1:{cfg['smtp']['port']}, pop3 127.0.0.1:{cfg['pop3']['port']}" in out, out


def test_show_masks_secrets(sim):
    out = console(sim, "show", "relay")
    assert 'relay.host = "127.0.0.1"' in out
    assert 'relay.secret = "***"' in out
    assert "hush-hush" not in out


@pytest.mark.parametrize("words, answer", [
    (["set", "smtp.max_size", "-5"], "error: smtp.max_size: must be a positive integer"),
    (["set", "smtp.port", "99999"], "error: smtp.port: must be a port number (1-65535)"),
    (["frobnicate"], "error: unknown command 'frobnicate'; try help"),
    (["user", "del", "nobody"], "error: no such user 'nobody'"),
])
def test_a_failed_command_names_the_problem_and_exits_non_zero(sim, words, answer):
    proc = run_console(sim, *words)
    assert proc.returncode == 1
    assert proc.stderr.strip() == answer and proc.stdout == ""


def test_set_user_and_save_reaches_the_flash(sim):
    assert console(sim, "user", "add", "carol", "pw", "carol@example.test").startswith("ok")
    assert console(sim, "set", "poll.interval", "120").startswith("ok")
    assert "saved" in console(sim, "save")
    saved = json.loads((sim.link.parent / "flash" / "config.json").read_text())
    assert saved["poll"]["interval"] == 120
    assert saved["users"]["carol"]["addresses"] == ["carol@example.test"]
    assert "carol" in console(sim, "show", "users")


def test_help_and_log(sim):
    assert "factory-reset" in console(sim, "help")
    assert "simulated board up" in console(sim, "log", "50")


def test_poll_and_status_show_the_scheduler(sim):
    assert console(sim, "poll").startswith("poll requested")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = console(sim, "status")
        if "last poll" in status and "none yet" not in status:
            break
        time.sleep(0.5)
    last = [line for line in status.splitlines() if line.startswith("last poll")]
    assert last and "ago:" in last[0], status
    assert "next poll" in status
    assert "queue    0 for local delivery, 0 outgoing" in status
    assert "poll:" in console(sim, "log", "10")


def test_interactive_console_in_a_terminal(sim):
    """`odmrgw console --port P` as a person runs it: a terminal (mpremote's)
    on the board's console; Ctrl-] leaves and the gateway keeps running."""
    import os
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child: odmrgw in a terminal
        os.execv(sys.executable, [sys.executable, "-m", "host_tools", "console", "--port", str(sim.link)])

    def read_until(marker, timeout=20):
        got = b""
        end = time.monotonic() + timeout
        while marker not in got and time.monotonic() < end:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    got += os.read(fd, 4096)
                except OSError:
                    break
        return got

    exited = []

    def wait_exit(timeout=20):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                exited.append(status)
                return os.WEXITSTATUS(status)
            time.sleep(0.1)
        return None

    try:
        assert b"console of the gateway: type help" in read_until(b"exit this shell")
        os.write(fd, b"status\r")
        assert b"uptime" in read_until(b"gw> ")
        os.write(fd, b"\x1d")  # Ctrl-]
        assert wait_exit() == 0
    finally:
        if not exited:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
    assert "uptime" in console(sim, "status")  # still running
