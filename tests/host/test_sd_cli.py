"""`odmrgw sd ...` round-trips files through a fresh image via VfsFat."""
import os
import subprocess
import sys
from pathlib import Path

ODMRGW = [str(Path(sys.executable).parent / "odmrgw")]


def odmrgw(*args, **kw):
    return subprocess.run([*ODMRGW, *map(str, args)], capture_output=True, **kw)


def test_round_trip_through_a_fresh_image(tmp_path):
    img = tmp_path / "card.img"
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    assert odmrgw("sd", "mkfs", img, "--size", "8M").returncode == 0
    assert img.stat().st_size == 8 << 20
    assert odmrgw("sd", "put", img, src, "/dir/sub/file.bin").returncode == 0
    listing = odmrgw("sd", "ls", img, "/dir/sub", text=True).stdout
    assert "file.bin" in listing and "300000" in listing
    assert "dir/" in odmrgw("sd", "ls", img, text=True).stdout
    assert odmrgw("sd", "cat", img, "/dir/sub/file.bin").stdout == src.read_bytes()
    back = tmp_path / "back.bin"
    assert odmrgw("sd", "get", img, "/dir/sub/file.bin", back).returncode == 0
    assert back.read_bytes() == src.read_bytes()


def test_missing_file_is_a_clear_error(tmp_path):
    img = tmp_path / "card.img"
    odmrgw("sd", "mkfs", img, "--size", "2M", check=True)
    proc = odmrgw("sd", "cat", img, "/nope", text=True)
    assert proc.returncode != 0
    assert "ENOENT" in proc.stderr


def test_python_dash_m_works_and_rejects_a_bad_size(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "host_tools", "sd", "mkfs", tmp_path / "x.img", "--size", "lots"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "not a size" in proc.stderr
