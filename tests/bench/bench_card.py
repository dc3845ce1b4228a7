"""Raw card throughput: writing through VfsFat on the simulated card versus
CPython writing the same bytes to a host file, in the same run."""
import os
import subprocess
import tempfile
import time
from pathlib import Path

from host_tools import mpy

SIZE = 32 << 20
SCRIPT = """
import sys, time
from board import Board, make_image
img = sys.argv[1]
make_image(img, %d)
b = Board(img); root = b.mount_sd()
buf = bytearray(4096); mv = memoryview(buf)
t0 = time.ticks_ms()
with open(root + '/big', 'wb') as f:
    for _ in range(%d // 4096):
        f.write(mv)
print(time.ticks_diff(time.ticks_ms(), t0))
b.umount_sd()
"""


def run(report):
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "w.py"
        script.write_text(SCRIPT % (SIZE + (8 << 20), SIZE))
        out = mpy.run(script, Path(tmp) / "card.img", capture_output=True, text=True, check=True).stdout
        fat_ms = max(int(out.split()[-1]), 1)
        t0 = time.monotonic()
        with open(Path(tmp) / "host", "wb") as f:
            buf = bytes(4096)
            for _ in range(SIZE // 4096):
                f.write(buf)
            f.flush()
            os.fsync(f.fileno())
        host_ms = max((time.monotonic() - t0) * 1000, 1)
    fat = SIZE / fat_ms / 1000
    host = SIZE / host_ms / 1000
    report("VfsFat write on the simulated card", f"{fat:.0f} MB/s")
    report("host file write + fsync (CPython)", f"{host:.0f} MB/s")
    report("ratio card / host", f"{fat / host:.2f}x")
