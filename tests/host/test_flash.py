"""`odmrgw flash --dry-run` prints the exact esptool invocations, per chip."""
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO

ODMRGW = [sys.executable, "-m", "host_tools"]


def flash(*args):
    proc = subprocess.run([*ODMRGW, "flash", *args], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.parametrize("chip, offset", [("esp32", "0x1000"), ("esp32s2", "0x1000"), ("esp32s3", "0x0"), ("esp32c3", "0x0")])
def test_dry_run_prints_erase_then_write_at_the_chip_offset(chip, offset):
    lines = flash("--port", "/dev/ttyUSB7", "--firmware", "fw dir/ESP32.bin", "--chip", chip, "--dry-run")
    assert [shlex.split(line)[1:] for line in lines] == [
        ["-m", "esptool", "--chip", chip, "--port", "/dev/ttyUSB7", "erase-flash"],
        ["-m", "esptool", "--chip", chip, "--port", "/dev/ttyUSB7", "--baud", "460800", "write-flash", offset, "fw dir/ESP32.bin"],
    ]


def test_dry_run_with_auto_asks_the_chip_first():
    lines = flash("--port", "/dev/ttyACM0", "--firmware", "fw.bin", "--dry-run")
    assert lines[0].startswith("#")
    assert shlex.split(lines[1])[1:] == ["-m", "esptool", "--chip", "auto", "--port", "/dev/ttyACM0", "chip-id"]
    writes = [shlex.split(line) for line in lines if "write-flash" in line]
    assert {w[4]: w[-2] for w in writes}["esp32"] == "0x1000"
    assert {w[4]: w[-2] for w in writes}["esp32s3"] == "0x0"


def test_the_printed_invocation_is_one_esptool_accepts():
    # esptool itself parses it and only then fails to open the missing port
    line = flash("--port", "/dev/odmrgw-no-such-port", "--firmware", "fw.bin", "--chip", "esp32", "--dry-run")[0]
    proc = subprocess.run(shlex.split(line), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "odmrgw-no-such-port" in proc.stdout + proc.stderr
    assert "No such option" not in proc.stdout + proc.stderr
