# What the spool and the mailboxes share on the card: the record's format
# (spool.py describes it) and the few file helpers both use. A leaf: the
# writing side (spool), the reading side (spoolread), the mailboxes and the
# hand-off all import it, and it imports none of them.
import os

from gateway.compat import const, ilistdir

MAGIC = b"ODMRGW1"
TRAILER = const(43)  # len(b"END2 %s %010d %08x %08x\n") with an 8-digit id (spool.Draft.commit)
QUEUES = ("local", "out")
LETTERS = "lo"  # a spool file's extension: the letters of its queues, in this order


def letter(queue):
    i = QUEUES.index(queue)
    return LETTERS[i : i + 1]  # a slice: s[i] would intern a qstr


def exists(path):
    try:
        return os.stat(path)
    except OSError:
        return None


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def mkdir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass


class Scan:
    """`with Scan(path) as entries:` os.ilistdir that always runs to its end.
    An unfinished VfsFat iterator is closed by its finaliser at some later
    collection, which may come after the card was unmounted: f_closedir on
    a volume that is gone crashed the 32-bit build. A directory that is
    missing or fails to read lists as empty, or ends there."""

    TRIES = 4  # collections __exit__ makes room with before it gives up

    def __init__(self, path):
        try:
            self._it = ilistdir(path)
        except OSError:
            self._it = iter(())

    def __enter__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._it)
        except OSError:
            self._it = iter(())
            raise StopIteration

    def __exit__(self, *exc):
        # To the end even when the heap ran out (the likeliest reason to be
        # here early): each entry is a small tuple, garbage once seen, so a
        # collection makes room for the next.
        for _ in range(self.TRIES):
            try:
                for _ in self:
                    pass
                return False
            except MemoryError:
                import gc

                gc.collect()
        return False


def buckets(root, width=6):
    """The bucket directories under root, oldest first: names of `width`
    hex digits, the ids' first (a few dozen names at 10,000 messages)."""
    with Scan(root) as entries:
        return sorted(e[0] for e in entries if e[1] & 0x4000 and len(e[0]) == width)
