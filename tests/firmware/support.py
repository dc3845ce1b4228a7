# Helpers for firmware tests that run on both CPython and MicroPython.
# Nothing here may use a module that MicroPython lacks, except behind the
# runtime check below.
import os
import sys

MICROPYTHON = sys.implementation.name == "micropython"
WORD = 8 if sys.maxsize > 1 << 32 else 4  # bytes in a pointer: heap blocks scale with it


class Skip(Exception):
    pass


def skip(reason):
    if MICROPYTHON:
        raise Skip(reason)
    import pytest

    pytest.skip(reason)


def needs_micropython(what="VfsFat"):
    if not MICROPYTHON:
        skip("needs MicroPython's " + what)


class raises:
    """`with raises(ValueError) as r:` - the assertion both runtimes can run."""

    def __init__(self, exc):
        self.exc = exc
        self.value = None

    def __enter__(self):
        return self

    def __exit__(self, typ, value, tb):
        if typ is None:
            raise AssertionError("did not raise %r" % (self.exc,))
        if not issubclass(typ, self.exc):
            return False
        self.value = value
        return True


def config(cfg):
    """cfg with the schema's defaults filled in, as the box's parts get it
    (they read the validated config and hold no defaults of their own)."""
    from gateway import config as schema
    from gateway.compat import drop_modules

    try:
        return schema.validate(cfg)
    finally:
        drop_modules(("gateway.config",))


# Two office users, no catch-all: the config the listener tests share.
OFFICE = {
    "users": {
        "alice": {"password": "alice-pw", "addresses": ["alice@example.test"]},
        "bob": {"password": "bob-pw", "addresses": ["bob@example.test"]},
    },
    "catch_all": {},
}


class patched:
    """with patched(obj, NAME=value, ...): class attributes (limits, timeouts)
    set for the block and put back after it, whatever happens in it."""

    def __init__(self, obj, **values):
        self.obj = obj
        self.values = values
        self.saved = {name: getattr(obj, name) for name in values}

    def __enter__(self):
        for name, value in self.values.items():
            setattr(self.obj, name, value)
        return self

    def __exit__(self, typ, value, tb):
        for name, value in self.saved.items():
            setattr(self.obj, name, value)
        return False


def cut_heap(largest):
    """Cuts the MicroPython heap up as a day of sessions does: what is free
    is left in holes of `largest` bytes (and a block), each kept from the
    next by a small block that stays, so small allocations still succeed
    and none much bigger than `largest` does. Returns what keeps the heap
    cut: clear() it to mend the heap. Dropped, it can stay reachable from a
    stale slot of a frame and come free only later, a big block opening in
    the middle of the next cut."""
    needs_micropython("gc.mem_free")
    import gc

    gc.collect()
    n = gc.mem_free() // (largest + 32) + 8
    # One list holds holes and posts alike: a list of its own for the holes,
    # let go, could be freed only at some later collection (the stack may
    # still point at it), and leave a large block after all.
    keep = [None] * (2 * n + 64)
    k = 0
    try:
        while k < 2 * n:
            keep[k] = bytearray(largest)
            keep[k + 1] = bytearray(16)
            k += 2
    except MemoryError:
        pass
    for i in range(0, k + 1, 2):
        keep[i] = None
    gc.collect()
    # What larger room is left goes too, until two tries in a row find
    # none: a failed allocation collects first, and the collector is
    # conservative, so what a stale pointer kept alive at one collection
    # may come free at the next.
    for size in (4 * largest, largest + 64, largest + 16):
        misses = 0
        while k < len(keep) and misses < 2:
            try:
                keep[k] = bytearray(size)
                k += 1
                misses = 0
            except MemoryError:
                misses += 1
    return keep


_counter = [0]


def tmpdir():
    """A fresh directory under the one the test runner gave this test."""
    _counter[0] += 1
    path = "%s/t%d" % (os.getenv("FW_TMP"), _counter[0])
    os.mkdir(path)
    return path


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def read_body(spool, id, bufsize=700):
    """The message bytes of spool record id, read through a small buffer."""
    out = bytearray()
    buf = bytearray(bufsize)
    with spool.open(id) as body:
        while True:
            n = body.readinto(buf)
            if not n:
                return bytes(out)
            out += buf[:n]


def rcpts(env, queue=None):
    """The pending (address, queue) pairs of a spool Envelope, in order."""
    with env.recipients(queue) as rs:
        return [(a, q) for _, a, q in rs]


def record_path(spool, id):
    """Where the spool keeps record id on the card (what a test damages)."""
    from gateway import spoolread

    return spoolread.path(spool, id)


class Card:
    """Somewhere to keep mail. On MicroPython: a FAT image mounted through
    VfsFat on the simulated board (optionally with a power cut). On CPython:
    a plain directory, since CPython has no VfsFat."""

    def __init__(self, size=4 << 20, cut_after=None, tear=0, image=None):
        self.board = None
        if MICROPYTHON:
            from board import Board, make_image

            self.image = image or tmpdir() + "/card.img"
            if not image:
                make_image(self.image, size)
            self.board = Board(self.image, cut_after, tear)
            self.root = self.board.mount_sd()
        else:
            self.image = None
            self.root = image or tmpdir()

    def remount(self, cut_after=None, tear=0):
        """Power back on: drop everything FatFs held in RAM and mount again."""
        self.unmount()
        return Card(image=self.image or self.root, cut_after=cut_after, tear=tear)

    def unmount(self):
        if self.board:
            self.board.umount_sd()


def run(coro):
    import asyncio

    return asyncio.run(coro)


async def start_server(handler, host="127.0.0.1", tries=50):
    """asyncio.start_server on a free loopback port, as (server, port).
    MicroPython's sockets have no getsockname, so pick ports at random and
    retry when one is taken."""
    import asyncio
    import random

    for _ in range(tries):
        port = random.randrange(20000, 60000)
        try:
            return await asyncio.start_server(handler, host, port), port
        except OSError:
            pass
    raise OSError("no free loopback port after %d tries" % tries)


class ScriptedStream:
    """An asyncio-style stream that hands out pre-set chunks, one per read, so a
    test controls exactly where TCP would have split the bytes. What is
    written to it is collected in `.out`."""

    def __init__(self, chunks=()):
        self.chunks = list(chunks)
        self.out = bytearray()
        self.closed = False

    async def readinto(self, buf):
        if not self.chunks:
            return 0
        chunk = self.chunks[0]
        n = min(len(chunk), len(buf))
        buf[:n] = chunk[:n]
        if n == len(chunk):
            self.chunks.pop(0)
        else:
            self.chunks[0] = chunk[n:]
        return n

    async def read(self, n):
        buf = bytearray(n)
        got = await self.readinto(buf)
        return bytes(buf[:got])

    def write(self, data):
        self.out += data

    async def drain(self):
        pass

    out_buf = b""  # as a MicroPython Stream's: every write was taken whole

    def close(self):
        self.closed = True

    async def wait_closed(self):
        pass
