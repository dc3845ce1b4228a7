"""Real mpremote drives the simulated board over a pty, the way it drives the
box over USB: `exec`, `odmrgw deploy` (.mpy files, only what changed) and
`odmrgw config push|pull|set` (with a PEM CA converted to DER)."""
import json
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from tests.conftest import REPO
from tests.host import simboard

ODMRGW = [sys.executable, "-m", "host_tools"]
MPREMOTE = str(Path(sys.executable).parent / "mpremote")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    board = simboard.start(tmp_path_factory.mktemp("deploy"))
    yield board
    board.close()


def flash_dir(sim):
    return sim.link.parent / "flash"


def odmrgw(*args, ok=True):
    proc = subprocess.run([*ODMRGW, *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def mpremote_exec(sim, code):
    proc = subprocess.run([MPREMOTE, "connect", str(sim.link), "resume", "exec", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_mpremote_exec_reaches_the_board(sim):
    # the first connect stops the gateway (Ctrl-C) and lands in the REPL
    assert mpremote_exec(sim, "import sys; print(sys.platform, sys.implementation.name)").split() == ["linux", "micropython"]
    assert mpremote_exec(sim, "import os; print(os.getcwd())").strip() == str(flash_dir(sim))


def test_deploy_copies_mpy_files_then_only_what_changed(sim):
    first = odmrgw("deploy", "--port", str(sim.link), "--board", "olimex_esp32_poe").stdout
    assert "[1/" in first and "lib/gateway/config.mpy" in first
    flash = flash_dir(sim)
    for name in ("boot.py", "main.py", "board.mpy", "pins.mpy", "lib/gateway/app.mpy", "lib/gateway/console.mpy"):
        assert (flash / name).is_file(), name
    assert (flash / "lib/gateway/config.mpy").read_bytes()[:2] == b"M\x06"
    manifest = json.loads((flash / "odmrgw.manifest").read_text())
    assert "lib/gateway/config.mpy" in manifest
    again = odmrgw("deploy", "--port", str(sim.link), "--board", "olimex_esp32_poe").stdout
    assert ": 0 changed," in again and "[1/" not in again
    # another pin file: exactly one file differs
    other = odmrgw("deploy", "--port", str(sim.link), "--board", "devkitc_sd").stdout
    assert ": 1 changed," in other and "pins.mpy" in other
    # the board loads the deployed bytecode, not the source
    out = mpremote_exec(
        sim,
        "import sys\nsys.path.insert(0, 'lib')\n"
        "for k in [k for k in sys.modules if k.startswith('gateway')]: sys.modules.pop(k)\n"
        "import gateway.config as c\nprint(c.__file__, c.validate({})['relay']['port'])",
    )
    assert out.split() == ["lib/gateway/config.mpy", "366"]


def test_config_push_converts_the_pem_ca_and_pull_masks(sim, tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "provider-ca.pem"))
    cfg = {
        "hostname": "gw.example.test",
        "domains": ["example.test"],
        "relay": {"host": "relay.example.net", "ca": "provider-ca.pem", "user": "office", "secret": "s3cret"},
        "users": {"alice": {"password": "pw", "addresses": ["alice@example.test"]}},
        "catch_all": {"example.test": "alice"},
    }
    (tmp_path / "gw.json").write_text(json.dumps(cfg))
    odmrgw("config", "push", str(tmp_path / "gw.json"), "--port", str(sim.link))
    flash = flash_dir(sim)
    der = ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode())
    assert (flash / "provider-ca.der").read_bytes() == der
    pushed = json.loads((flash / "config.json").read_text())
    assert pushed["relay"]["ca"] == "provider-ca.der" and pushed["relay"]["secret"] == "s3cret"
    shown = odmrgw("config", "pull", "--port", str(sim.link)).stdout
    assert json.loads(shown)["relay"]["secret"] == "***" and "s3cret" not in shown and "pw" not in shown
    odmrgw("config", "pull", str(tmp_path / "back.json"), "--port", str(sim.link))
    assert json.loads((tmp_path / "back.json").read_text())["relay"]["secret"] == "s3cret"
    # the board reads it with the firmware's own loader
    assert mpremote_exec(sim, "from gateway import config\nprint(config.load('config.json')['relay']['ca'])").strip() == "provider-ca.der"


def test_config_set_checks_before_writing(sim):
    out = odmrgw("config", "set", "poll.interval", "300", "--port", str(sim.link)).stdout
    assert "poll.interval = 300" in out
    assert json.loads((flash_dir(sim) / "config.json").read_text())["poll"]["interval"] == 300
    assert "***" in odmrgw("config", "set", "relay.secret", "new-secret", "--port", str(sim.link)).stdout
    bad = odmrgw("config", "set", "pop3.port", "99999", "--port", str(sim.link), ok=False)
    assert bad.returncode != 0 and "pop3.port: must be a port number (1-65535)" in bad.stderr
    assert json.loads((flash_dir(sim) / "config.json").read_text())["pop3"]["port"] != 99999


def test_config_push_refuses_a_bad_file_before_touching_the_box(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"relay": {"tls": "ssl"}}))
    proc = odmrgw("config", "push", str(tmp_path / "bad.json"), "--port", "/dev/odmrgw-no-such-port", ok=False)
    assert proc.returncode != 0
    assert "relay.tls: must be one of implicit, starttls, none" in proc.stderr


def test_pem_to_der_takes_every_certificate():
    from host_tools.config import pem_to_der

    a, b = trustme.CA(), trustme.CA()
    pems = a.cert_pem.bytes().decode() + b.cert_pem.bytes().decode()
    assert pem_to_der(pems) == ssl.PEM_cert_to_DER_cert(a.cert_pem.bytes().decode()) + ssl.PEM_cert_to_DER_cert(b.cert_pem.bytes().decode())
    with pytest.raises(ValueError):
        pem_to_der("not a certificate")


def test_config_push_refuses_a_certificate_the_box_does_not_have(sim, tmp_path):
    before = (flash_dir(sim) / "config.json").read_bytes()
    (tmp_path / "tls.json").write_text(json.dumps({"pop3": {"cert": "pop3-cert.der", "key": "pop3-key.der"}}))
    proc = odmrgw("config", "push", str(tmp_path / "tls.json"), "--port", str(sim.link), ok=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "pop3.cert: no file pop3-cert.der on the box's flash; nothing was written" in proc.stderr
    assert (flash_dir(sim) / "config.json").read_bytes() == before
