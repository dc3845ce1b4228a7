# CPython's stand-ins for what gateway.compat takes from MicroPython, so that
# tests and host tools can import the firmware. Kept apart: the box never
# loads this module, so none of its bytecode takes the box's heap.
import os  # cpython-only
import sys  # cpython-only
import time  # cpython-only
import traceback  # cpython-only

_TICKS_PERIOD = 1 << 30


class micropython:  # noqa: N801 - stands in for the module's decorators
    @staticmethod
    def viper(f):
        # A viper function is plain Python here: same code, bytecode speed.
        return f

    native = viper


def ptr8(buf):
    return buf


class _Words:
    """viper's ptr32 of a buffer: its native-endian words, and int() of it
    its address, which is 0 here; see ptr32."""

    def __init__(self, words):
        self.words = words

    def __getitem__(self, i):
        return self.words[i]

    def __int__(self):
        return 0


_cast = [b""]  # the buffer ptr32 was last given


def ptr32(x):
    # A viper function may walk its buffer by address (ptr32(int(w) + k)):
    # with the buffer's address taken as 0, ptr32 of an int reads the words
    # from that byte of the buffer cast last.
    if isinstance(x, int):
        mv = memoryview(_cast[0])[x:]
        return mv[: len(mv) & ~3].cast("I")
    _cast[0] = x
    mv = memoryview(x)
    return _Words(mv[: len(mv) & ~3].cast("I"))


def const(x):
    return x


def ticks_ms():
    return int(time.monotonic() * 1000) % _TICKS_PERIOD


def ticks_add(t, delta):
    return (t + delta) % _TICKS_PERIOD


def ticks_diff(a, b):
    d = (a - b) % _TICKS_PERIOD
    return d - _TICKS_PERIOD if d >= _TICKS_PERIOD // 2 else d


def print_exception(exc, file=None):
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=file or sys.stdout)


def read_now(stream, buf):
    # Every read goes through the event loop here.
    return None


async def readinto(stream, buf):
    # CPython's StreamReader has no readinto; one bounded copy per read.
    data = await stream.read(len(buf))
    n = len(data)
    buf[:n] = data
    return n


def mem_free():
    return None


def no_delay(writer):
    # asyncio sets TCP_NODELAY on every TCP transport already.
    pass


def write_view(writer, view):
    # asyncio's transports may keep a reference to what they are given.
    writer.write(bytes(view))


def drain_can_block(writer):
    # Bounding every drain costs nothing scarce here.
    return True


def ilistdir(path):
    # MicroPython's os.ilistdir: (name, type, inode) without a list.
    for e in os.scandir(path):
        yield (e.name, 0x4000 if e.is_dir() else 0x8000, 0)


def fsync(f):
    f.flush()
    os.fsync(f.fileno())


async def start_tls(reader, writer, ctx):
    await writer.start_tls(ctx)


async def start_tls_client(reader, writer, ctx, server_name, timeout):
    await writer.start_tls(ctx, server_hostname=server_name, ssl_handshake_timeout=timeout)


def mem_alloc():
    return None


def drop_modules(names):
    # CPython has the memory to keep them, and its tests hold classes
    # across phases that a reload would make into strangers.
    pass


def peer_address(peer):
    # ("ip", port), as asyncio reports it here.
    return peer


def load_cert_chain(ctx, cert, key):
    # CPython's ssl reads PEM files only: the box's DER goes through a
    # private temporary copy.
    import tempfile  # cpython-only

    from cryptography import x509  # cpython-only
    from cryptography.hazmat.primitives import serialization as ser  # cpython-only

    with open(cert, "rb") as f:
        pem = x509.load_der_x509_certificate(f.read()).public_bytes(ser.Encoding.PEM)
    with open(key, "rb") as f:
        pem += ser.load_der_private_key(f.read(), None).private_bytes(
            ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    with tempfile.NamedTemporaryFile(suffix=".pem") as f:
        f.write(pem)
        f.flush()
        ctx.load_cert_chain(f.name)
