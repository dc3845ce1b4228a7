"""Every `odmrgw` subcommand, given the mistake a person typically makes:
a non-zero exit, one line that names what is wrong, and never a traceback."""
import json
import subprocess
import sys

import pytest

from host_tools.relay.testing import write_config
from tests.conftest import REPO
from tests.host import simboard

PORT = "/dev/ttyUSB77"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mistakes")
    config, image = simboard.make_board_files(d)
    relay = write_config(d / "relay.toml", d / "queue")
    (d / "foreign").mkdir()
    (d / "foreign" / "thesis.tex").write_text("years of work")
    (d / "garbage.img").write_bytes(b"not a card" * 100)
    (d / "index.html").write_text("<html>404</html>")
    bad = json.loads(config.read_text())
    bad["pop3"]["port"] = bad["smtp"]["port"]
    (d / "clash.json").write_text(json.dumps(bad))
    return {"dir": d, "config": config, "image": image, "relay": relay}


# (arguments, the name the message must carry); {x} are the fixture's files
MISTAKES = [
    (["demo", "--once", "--dir", "{dir}/foreign"], "{dir}/foreign"),
    (["demo", "--once", "--ports", "80"], "--ports 80"),
    (["relay", "--config", "{dir}/missing.toml"], "{dir}/missing.toml"),
    (["relay", "queue", "--config", "{relay}", "inject", "{dir}/missing.eml"], "{dir}/missing.eml"),
    (["relay", "queue", "--config", "{relay}", "show", "nosuchid"], "nosuchid"),
    (["sd", "mkfs", "{image}"], "{image}"),
    (["sd", "mkfs", "{dir}/nodir/card.img"], "{dir}/nodir"),
    (["sd", "mkfs", "{dir}/new.img", "--size", "lots"], "lots"),
    (["sd", "ls", "/nonexistent/card.img"], "/nonexistent/card.img"),
    (["sd", "ls", "{garbage}"], "not a FAT image"),
    (["sd", "ls", "{image}", "/nodir"], "/nodir"),
    (["sd", "cat", "{image}", "/nofile"], "/nofile"),
    (["sd", "get", "{image}", "/nofile", "{dir}/out"], "/nofile"),
    (["sd", "put", "{image}", "{dir}/missing.txt", "/x"], "{dir}/missing.txt"),
    (["sd", "df", "{garbage}"], "{garbage}"),
    (["sd", "export", "/nonexistent/card.img", "{dir}/export"], "/nonexistent/card.img"),
    (["sim", "--config", "/nonexistent.json", "--sd", "/nonexistent.img", "--once"], "/nonexistent.json"),
    (["sim", "--config", "{config}", "--sd", "{garbage}", "--once"], "not a FAT image"),
    (["sim", "--config", "{dir}/clash.json", "--sd", "{image}", "--once"], "pop3.port"),
    (["sim", "--config", "{config}", "--sd", "{image}", "--pty", "{dir}/no/tty"], "{dir}/no"),
    (["sim", "--config", "{config}", "--sd", "{image}", "--pty", "{config}"], "{config}"),
    (["flash", "--port", PORT, "--firmware", "{dir}/missing.bin"], "{dir}/missing.bin"),
    (["flash", "--port", PORT, "--firmware", "{dir}/index.html", "--dry-run"], "{dir}/index.html"),
    (["flash", "--port", PORT, "--firmware", "{image}", "--chip", "esp32"], PORT),
    (["deploy", "--port", PORT, "--board", "devkitc_sd"], PORT),
    (["config", "push", "{config}", "--port", PORT], PORT),
    (["config", "pull", "--port", PORT], PORT),
    (["config", "set", "poll.interval", "60", "--port", PORT], PORT),
    (["console", "--port", PORT, "status"], PORT),
    (["console", "--port", PORT], PORT),
]


@pytest.mark.parametrize("args, name", MISTAKES, ids=[" ".join(a[:2]) for a, _ in MISTAKES])
def test_a_typical_mistake_is_one_line_naming_it(files, args, name):
    fill = {"dir": files["dir"], "config": files["config"], "image": files["image"], "relay": files["relay"],
            "garbage": files["dir"] / "garbage.img"}
    if args[:2] == ["flash", "--port"] and "{image}" in args:
        (files["dir"] / "fw.bin").write_bytes(b"\xe9" + bytes(255))  # a real-looking image: the port is wrong
        args = [a.replace("{image}", "{dir}/fw.bin") for a in args]
    argv = [a.format(**fill) for a in args]
    proc = subprocess.run([sys.executable, "-m", "host_tools", *argv], capture_output=True, text=True, cwd=REPO,
                          timeout=120, stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    assert name.format(**fill) in out, out
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) <= 1, out
