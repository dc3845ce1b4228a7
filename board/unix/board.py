# The simulated board: the same firmware as on the ESP32, with a FAT image file
# as the SD card. The card goes through vfs.VfsFat, the same FatFs code the
# ESP32 uses, so what the spool sees on a PC is what it sees on the box.
import os
import sys
import time
import vfs
from micropython import const

_BLOCK = const(512)
# time.time() on the unix port already counts from 1970.
EPOCH_OFFSET = const(0)


class PowerCut(OSError):
    pass


class FileBlockDev:
    """A block device over an image file, with an optional power cut.

    With cut_after=N the first N block writes reach the file; the rest never
    do, and every write from the cut on raises PowerCut, the way a CPU that
    lost power stops taking further steps. tear=k lets the first k bytes of
    the block at the cut land, which models a torn sector.
    """

    def __init__(self, path, cut_after=None, tear=0):
        self._f = open(path, "r+b")
        self._f.seek(0, 2)
        self.blocks = self._f.tell() // _BLOCK
        self.block_writes = 0
        self.block_reads = 0
        self.syncs = 0  # FatFs f_sync calls: what the bench counts as fsyncs
        self.cut_after = cut_after
        self.tear = tear
        self.cut = False
        # Where the image file stands (-1: not known): FatFs writes a
        # message's clusters in sequence, and a seek before each block
        # write was a system call each.
        self._at = -1

    # Both methods keep to three locals: a call whose frame needs more than
    # eleven words takes it from the heap, once per block transfer.
    def readblocks(self, n, buf):
        self.block_reads += len(buf) // _BLOCK
        n *= _BLOCK
        if n != self._at:
            self._f.seek(n)
        self._at = -1
        if self._f.readinto(buf) != len(buf):
            raise OSError(5)  # EIO: read past the end of the image
        self._at = n + len(buf)

    def writeblocks(self, n, buf):
        if self.cut:
            raise PowerCut(5)
        n *= _BLOCK
        if n != self._at:
            self._f.seek(n)
        self._at = -1
        if self.cut_after is not None and self.block_writes + len(buf) // _BLOCK > self.cut_after:
            # The cut: the blocks before it land, and `tear` bytes of the next.
            self.cut = True
            n = (self.cut_after - self.block_writes) * _BLOCK + min(self.tear, _BLOCK)
            self._f.write(memoryview(buf)[:n])
            self._f.flush()
            raise PowerCut(5)
        # No len(): a builtin is found by a linear search of the builtins'
        # table after a miss in the module's, dearer than the write's call.
        self._at = n + self._f.write(buf)
        self.block_writes += (self._at - n) // _BLOCK

    def ioctl(self, op, arg):
        if op == 3:  # sync
            self.syncs += 1
            self._f.flush()
        elif op == 4:
            return self.blocks
        elif op == 5:
            return _BLOCK
        return 0

    def close(self):
        self._f.close()


def make_image(path, size):
    """Create a blank card image of `size` bytes and format it FAT."""
    with open(path, "wb") as f:
        f.seek(size - 1)
        f.write(b"\0")
    dev = FileBlockDev(path)
    vfs.VfsFat.mkfs(dev)
    dev.close()


class Board:
    """What the app may know about the hardware: the card, the clock, the
    network and the watchdog. The ESP32 board offers the same names."""

    name = "unix"
    sd_root = "/sd"
    card_problem = None  # a sentence while the card cannot be used (main.py)

    def __init__(self, image, cut_after=None, tear=0):
        self.image = image
        self.dev = None
        self._cut_after = cut_after
        self._tear = tear
        self.started = time.time()

    def mount_sd(self):
        self.dev = FileBlockDev(self.image, self._cut_after, self._tear)
        vfs.mount(vfs.VfsFat(self.dev), self.sd_root)
        return self.sd_root

    def umount_sd(self):
        try:
            vfs.umount(self.sd_root)
        except OSError:
            pass
        if self.dev:
            self.dev.close()
            self.dev = None

    def now(self):
        """Seconds since 1970-01-01 UTC, whatever the port's own epoch."""
        return time.time() + EPOCH_OFFSET

    def network_status(self):
        return "loopback (simulated board)"

    def feed_watchdog(self):
        pass

    def reboot(self):
        sys.exit(0)

    def card_free(self):
        st = os.statvfs(self.sd_root)
        return st[0] * st[4]

    def card_size(self):
        st = os.statvfs(self.sd_root)
        return st[0] * st[2]
