# The simulated SD card: a FAT image through VfsFat, and its power cut.
import os

import support


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_a_file_survives_a_remount():
    card = support.Card()
    _write(card.root + "/hello.txt", b"hello card")
    card = card.remount()
    assert _read(card.root + "/hello.txt") == b"hello card"
    card.unmount()


def test_power_cut_stops_all_later_writes_and_card_still_mounts():
    support.needs_micropython()
    from board import PowerCut

    card = support.Card()
    _write(card.root + "/before.txt", b"x" * 2000)
    card = card.remount(cut_after=3, tear=100)
    with support.raises(PowerCut):
        for i in range(20):
            _write(card.root + "/f%d.txt" % i, b"y" * 1500)
    assert card.board.dev.cut
    persisted = card.board.dev.block_writes
    assert persisted <= 3
    card = card.remount()
    # The file written before the cut is intact: FAT mounted and readable.
    assert _read(card.root + "/before.txt") == b"x" * 2000
    os.listdir(card.root)
    card.unmount()


def test_clock_counts_from_1970():
    support.needs_micropython("board module")
    from board import Board

    # 2020-01-01 is 1577836800 s after 1970 and 631152000 s after 2000.
    assert Board("unused").now() > 1577836800
