"""One writer per card image: a simulated board or an `odmrgw sd` write holds
IMAGE.lock, flock()ed, with its process id inside. Two simulators on one
image would hand out the same spool ids and lose mail.

The kernel drops a flock when the last process holding the file closes it,
so a lock file left by a process that died is stale by construction: it is
simply taken over. The locked descriptor is passed to the micropython child,
so the image stays locked as long as either process runs.
"""
import fcntl
import os
from pathlib import Path


class CardBusy(SystemExit):
    pass


class CardLock:
    def __init__(self, image, what="odmrgw"):
        self.path = Path(str(image) + ".lock")
        self.image = image
        self.what = what
        self.fd = None

    def acquire(self):
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise CardBusy(f"{self.what}: {self.image} is in use by {holder}; stop it first "
                               f"(two writers on one card lose mail)")
            # the holder before us may have removed the file we opened
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        self.note(f"process {os.getpid()}")
        return self

    def note(self, holder):
        """Who holds the lock, for the message a second writer gets."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, holder.encode() + b"\n", 0)

    def release(self):
        if self.fd is not None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
