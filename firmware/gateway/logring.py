# The log on the card, capped in size: lines go to <path>; when it passes half
# the cap it becomes <path>.1 (replacing the older half) and a fresh file
# starts. So the card never holds more than `size` bytes of log, and the last
# half of that is always there to read. Attach with gateway.log.attach(ring.write).
import os


class LogRing:
    SIZE = 64 * 1024
    TAIL_BYTES = 3072  # the most `tail` reads from the card, whatever n asks for: heap is scarce

    def __init__(self, path, clock=None, size=SIZE):
        self.path = path
        self.old = path + ".1"
        self.half = size // 2
        self.clock = clock
        self._f = None
        self._len = 0

    def write(self, line):
        try:
            if self._f is None:
                self._f = open(self.path, "a")
                self._len = self._f.seek(0, 2)
            if self.clock:
                self._len += self._f.write("%d " % self.clock())
            self._len += self._f.write(line)
            self._len += self._f.write("\n")
            self._f.flush()
            if self._len >= self.half:
                self._rotate()
        except OSError:
            # A full or missing card must never stop the gateway from logging
            # to the console; the next line tries again.
            self.close()

    def _rotate(self):
        self.close()
        try:
            os.remove(self.old)
        except OSError:
            pass
        os.rename(self.path, self.old)

    def close(self):
        if self._f:
            f, self._f = self._f, None
            f.close()

    def tail(self, n):
        """The last n lines, oldest first."""
        if self._f:
            self._f.flush()
        lines = []
        budget = self.TAIL_BYTES
        for path in (self.path, self.old):
            if len(lines) >= n or budget <= 0:
                break
            chunk = _read_end(path, budget)
            budget -= len(chunk)
            got = chunk.decode().split("\n")
            if got and got[-1] == "":
                got.pop()
            lines = got + lines
        return lines[-n:] if n > 0 else []


def _read_end(path, most):
    try:
        f = open(path, "rb")
    except OSError:
        return b""
    try:
        size = f.seek(0, 2)
        f.seek(max(0, size - most))
        chunk = f.read(most)
    finally:
        f.close()
    if size > most:
        # started mid-line (maybe mid-character): keep whole lines only
        chunk = chunk[chunk.find(b"\n") + 1 :]
    return chunk
