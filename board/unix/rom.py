# The simulated board's romfs partition (docs/freezing.md): main.py mounts
# the gateway's image before anything else is on the heap.
import os
import sys
import vfs


def mount_rom(path):
    """What MicroPython does at reset on a board with a romfs partition: the
    image is mounted at /rom, ahead of /lib, and the gateway's bytecode runs
    in place from it. The box maps the image from flash; here it is read
    into one bytearray before anything else is on the heap, and `odmrgw sim`
    gives the heap that much more room (mpy.rom_heapsize)."""
    image = bytearray(os.stat(path)[6])
    f = open(path, "rb")
    try:
        f.readinto(image)
    finally:
        f.close()
    vfs.mount(vfs.VfsRom(image), "/rom")
    sys.path.insert(1, "/rom")
