# IMAP's state on the card: a small record rewritten in place in one of two
# slots of whole 512-byte sectors, written in turn, each with a generation and a checksum.
# FAT's rename is no atomic commit and a sector may tear in a power cut; a
# torn slot fails its checksum and the other, older one is read. So a reader
# finds the old state or the new one, never a mix. The file keeps its size,
# so a rewrite needs no free cluster on a full card.
import binascii
import os

from gateway.compat import const, fsync

_SLOT = const(512)
_TAIL = const(16)  # generation and crc32, 8 hex digits each


def read(path, mv):
    """The generation (0: none) of the newer valid slot of path, whose
    record is then in mv (len(mv) bytes; all zero when there is none)."""
    best, gen = -1, 0
    try:
        f = open(path, "rb")
    except OSError:
        f = None
    if f:
        with f:
            for k in (0, 1):
                g = _slot(f, k, mv)
                if g > gen:
                    best, gen = k, g
            if best == 0:
                _slot(f, 0, mv)
    if best < 0:
        for i in range(len(mv)):
            mv[i] = 0
    return gen


def _size(n):
    """The slot of a record of n bytes: its sectors, the tail in the last."""
    return (n + _TAIL + _SLOT - 1) // _SLOT * _SLOT


def _slot(f, k, mv):
    n = len(mv)
    f.seek(k * _size(n))
    if f.readinto(mv) != n:
        return 0
    tail = f.read(_TAIL)
    try:
        gen, crc = int(tail[:8], 16), int(tail[8:], 16)
    except ValueError:
        return 0
    return gen if crc == binascii.crc32(tail[:8], binascii.crc32(mv)) else 0


def write(path, mv, gen):
    """mv as generation gen + 1, in the slot that gen's record is not in;
    on the card (f_sync) when this returns."""
    gen += 1
    try:
        f = open(path, "r+b")
    except OSError:
        f = open(path, "wb")  # both slots invalid until the first write below
        f.seek(2 * _size(len(mv)) - 1)
        f.write(b"\0")
    with f:
        f.seek((gen & 1) * _size(len(mv)))
        f.write(mv)
        tail = b"%08x" % gen
        f.write(tail + b"%08x" % binascii.crc32(tail, binascii.crc32(mv)))
        fsync(f)
    return gen


def mkdir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass
