"""`odmrgw flash --dry-run` prints the exact esptool invocations, per chip."""
import shlex
import subprocess
import sys

import pytest


ODMRGW = [sys.executable, "-m", "host_tools"]


def run_flash(*args):
    return subprocess.run([*ODMRGW, "flash", *map(str, args)], capture_output=True, text=True, timeout=60)


def flash(*args):
    proc = run_flash(*args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@pytest.fixture
def firmware(tmp_path, monkeypatch):
    """A file that starts like an ESP image, in a directory with a space."""
    (tmp_path / "fw dir").mkdir()
    (tmp_path / "fw dir" / "ESP32.bin").write_bytes(b"\xe9" + bytes(255))
    (tmp_path / "fw.bin").write_bytes(b"\xe9" + bytes(255))
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("chip, offset", [("esp32", "0x1000"), ("esp32s2", "0x1000"), ("esp32s3", "0x0"), ("esp32c3", "0x0")])
def test_dry_run_prints_erase_then_write_at_the_chip_offset(chip, offset, firmware):
    lines = flash("--port", "/dev/ttyUSB7", "--firmware", "fw dir/ESP32.bin", "--chip", chip, "--dry-run")
    assert [shlex.split(line)[1:] for line in lines] == [
        ["-m", "esptool", "--chip", chip, "--port", "/dev/ttyUSB7", "erase-flash"],
        ["-m", "esptool", "--chip", chip, "--port", "/dev/ttyUSB7", "--baud", "460800", "write-flash", offset, "fw dir/ESP32.bin"],
    ]


def test_dry_run_with_auto_asks_the_chip_first(firmware):
    lines = flash("--port", "/dev/ttyACM0", "--firmware", "fw.bin", "--dry-run")
    assert lines[0].startswith("#")
    assert shlex.split(lines[1])[1:] == ["-m", "esptool", "--chip", "auto", "--port", "/dev/ttyACM0", "chip-id"]
    writes = [shlex.split(line) for line in lines if "write-flash" in line]
    assert {w[4]: w[-2] for w in writes}["esp32"] == "0x1000"
    assert {w[4]: w[-2] for w in writes}["esp32s3"] == "0x0"


def test_the_printed_invocation_is_one_esptool_accepts(firmware):
    # esptool itself parses it and only then fails to open the missing port
    line = flash("--port", "/dev/odmrgw-no-such-port", "--firmware", "fw.bin", "--chip", "esp32", "--dry-run")[0]
    proc = subprocess.run(shlex.split(line), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "odmrgw-no-such-port" in proc.stdout + proc.stderr
    assert "No such option" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("dry_run", [["--dry-run"], []])
@pytest.mark.parametrize("content, message", [(None, "No such file or directory"),
                                              (b"<html>404</html>", "is not an ESP32 firmware image")])
def test_a_missing_or_wrong_firmware_file_stops_before_anything_is_erased(tmp_path, dry_run, content, message):
    fw = tmp_path / "ESP32_GENERIC.bin"
    if content is not None:
        fw.write_bytes(content)
    proc = run_flash("--port", "/dev/ttyUSB77", "--firmware", fw, "--chip", "esp32", *dry_run)
    assert proc.returncode != 0 and proc.stdout == ""
    assert str(fw) in proc.stderr and message in proc.stderr and "nothing was erased" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("chip", ["auto", "esp32"])
def test_a_wrong_port_is_one_line_naming_it(firmware, chip):
    proc = run_flash("--port", "/dev/ttyUSB77", "--firmware", "fw.bin", "--chip", chip)
    assert proc.returncode != 0 and "erase" not in proc.stdout
    assert proc.stderr.startswith("odmrgw flash: no serial port /dev/ttyUSB77; ") and proc.stderr.count("\n") == 1
