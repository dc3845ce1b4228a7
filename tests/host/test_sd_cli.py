"""`odmrgw sd ...` round-trips files through a fresh image via VfsFat."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from host_tools.cardlock import CardLock

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
    assert "/nope: no such file or directory" in proc.stderr


def test_python_dash_m_works_and_rejects_a_bad_size(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "host_tools", "sd", "mkfs", tmp_path / "x.img", "--size", "lots"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "not a size" in proc.stderr


def test_mkfs_refuses_an_image_holding_mail_unless_forced(tmp_path):
    img = tmp_path / "card.img"
    note = tmp_path / "note.txt"
    note.write_text("the only copy")
    odmrgw("sd", "mkfs", img, "--size", "2M", check=True)
    odmrgw("sd", "put", img, note, "/mail/note.txt", check=True)
    proc = odmrgw("sd", "mkfs", img, "--size", "2M", text=True)
    assert proc.returncode != 0
    assert f"{img} holds a FAT filesystem" in proc.stderr and "--force" in proc.stderr
    assert odmrgw("sd", "cat", img, "/mail/note.txt").stdout == b"the only copy"
    made = odmrgw("sd", "mkfs", img, "--size", "2M", "--force", text=True)
    assert made.returncode == 0 and f"made {img}" in made.stdout and "2.0 MiB FAT card" in made.stdout
    assert odmrgw("sd", "cat", img, "/mail/note.txt").returncode != 0


def test_mkfs_refuses_any_other_file_too(tmp_path):
    other = tmp_path / "thesis.txt"
    other.write_text("three years of work")
    proc = odmrgw("sd", "mkfs", other, "--size", "2M", text=True)
    assert proc.returncode != 0 and f"{other} exists" in proc.stderr
    assert other.read_text() == "three years of work"


def test_a_failed_mkfs_leaves_no_file_and_keeps_the_old_image(tmp_path):
    img = tmp_path / "card.img"
    proc = odmrgw("sd", "mkfs", img, "--size", "1K", text=True)
    assert proc.returncode != 0 and str(img) in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
    odmrgw("sd", "mkfs", img, "--size", "2M", check=True)
    before = img.read_bytes()
    assert odmrgw("sd", "mkfs", img, "--size", "1K", "--force").returncode != 0
    assert img.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.img"]


@pytest.mark.parametrize("content, message", [(None, "no such card image"), (b"", "not a FAT image"),
                                              (b"garbage " * 1000, "not a FAT image")])
def test_a_missing_empty_or_garbage_image_is_one_line(tmp_path, content, message):
    img = tmp_path / "card.img"
    if content is not None:
        img.write_bytes(content)
    for cmd in (["ls"], ["df"], ["cat", "/x"], ["put", __file__, "/x"], ["export", tmp_path / "out"]):
        proc = odmrgw("sd", cmd[0], img, *cmd[1:], text=True)
        assert proc.returncode != 0
        assert proc.stderr.startswith(f"odmrgw sd {cmd[0]}: {img}: {message} (odmrgw sd mkfs")
        assert proc.stderr.count("\n") == 1


def test_df_is_human_readable(tmp_path):
    img = tmp_path / "card.img"
    odmrgw("sd", "mkfs", img, "--size", "8M", check=True)
    out = odmrgw("sd", "df", img, text=True).stdout.strip()
    assert out.startswith("8.0 MiB FAT card: ") and "free (" in out


def test_a_write_refuses_an_image_in_use_and_takes_over_a_stale_lock(tmp_path):
    img = tmp_path / "card.img"
    odmrgw("sd", "mkfs", img, "--size", "2M", check=True)
    with CardLock(img):
        proc = odmrgw("sd", "put", img, __file__, "/x.py", text=True)
        assert proc.returncode != 0
        assert f"{img} is in use by process {os.getpid()}" in proc.stderr
        forced = odmrgw("sd", "mkfs", img, "--force", text=True)
        assert forced.returncode != 0 and "in use" in forced.stderr
        assert "in use" not in odmrgw("sd", "ls", img, text=True).stderr  # reading is fine
    assert odmrgw("sd", "cat", img, "/x.py").returncode != 0
    # a lock file whose process died: nothing holds its flock, so it is taken over
    (tmp_path / "card.img.lock").write_text("process 999999999\n")
    assert odmrgw("sd", "put", img, __file__, "/x.py").returncode == 0
    assert odmrgw("sd", "cat", img, "/x.py").stdout == Path(__file__).read_bytes()
    assert not (tmp_path / "card.img.lock").exists()
