# The log on the card, capped in size: lines go to <path>; when it passes half
# the cap it becomes <path>.1 (replacing the older half) and a fresh file
# starts. So the card never holds more than `size` bytes of log, and the last
# half of that is always there to read.
#
# A line is written at once but synced to the card only by flush(): the app
# flushes every few seconds, and gateway.log flushes after every warning or
# error. A sync per line was one of the two a LAN message cost; a power cut
# now loses at most a few seconds of info lines, never the line that says
# what went wrong. Attach with gateway.log.attach(ring.write, clock, ring.flush).
import os


class LogRing:
    SIZE = 64 * 1024
    MAX_TAIL = 200  # lines `tail` returns at most

    def __init__(self, path, size=SIZE):
        self.path = path
        self.old = path + ".1"
        self.half = size // 2
        self._f = None
        self._len = 0
        self._dirty = False

    def write(self, line):
        try:
            if self._f is None:
                self._f = open(self.path, "a")
                self._len = self._f.seek(0, 2)
            self._len += self._f.write(line)
            self._len += self._f.write("\n")
            self._dirty = True
            if self._len >= self.half:
                self._rotate()
        except OSError:
            # A full or missing card must never stop the gateway from logging
            # to the console; the next line tries again.
            self.close()

    def flush(self):
        if self._dirty and self._f:
            self._dirty = False
            try:
                self._f.flush()
            except OSError:
                self.close()

    def _rotate(self):
        self.close()
        try:
            os.remove(self.old)
        except OSError:
            pass
        os.rename(self.path, self.old)

    def close(self):
        self._dirty = False
        if self._f:
            f, self._f = self._f, None
            try:
                f.close()
            except OSError:
                pass

    def tail(self, n):
        """The last n lines (at most MAX_TAIL), oldest first. Reads line by
        line, keeping only n: no big buffer on a fragmented heap."""
        self.flush()
        n = min(n, self.MAX_TAIL)
        keep = []
        for path in (self.old, self.path):
            try:
                f = open(path)
            except OSError:
                continue
            with f:
                for line in f:
                    keep.append(line.rstrip("\n"))
                    if len(keep) > n:
                        keep.pop(0)
        return keep if n > 0 else []
