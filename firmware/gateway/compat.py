# The one module that knows which runtime it is on. Firmware runs unchanged on
# the ESP32 port and the unix port; the same modules also import on CPython so
# that tests and host tools can use them. No other firmware module may branch
# on the runtime: anything that differs gets a name here.
try:
    from micropython import const
    from time import ticks_ms, ticks_diff, ticks_add
    from sys import print_exception
    from os import ilistdir
    import gc
    import micropython

    # The viper compiler reads ptr8(x) and ptr32(x) as casts by name; these
    # only give a module something to import on both runtimes.
    ptr8 = ptr32 = None

    # A read that finds bytes waiting skips the poller for this long since
    # the last read that went through it. A turn by the clock, not by the
    # number of reads: on the box a 4 KB read and its card write take a few
    # ms, so other tasks wait at most about this; on a PC it is dozens of
    # reads, each trip through the poller costing about as much as the
    # parsing of the read it brings.
    _TURN_MS = const(20)
    _turn_ends = [0]

    def read_now(stream, buf):
        # Bytes already in the socket need no trip through the poller (an
        # asyncio Stream's readinto always waits for it first), nor a
        # coroutine of their own: None when the caller must await readinto.
        if ticks_diff(_turn_ends[0], ticks_ms()) > 0:
            try:
                return stream.s.readinto(buf)
            except AttributeError:  # not an asyncio Stream
                pass
        return None

    async def readinto(stream, buf):
        n = read_now(stream, buf)
        if n is not None:
            return n
        # Over TLS a read can consume only handshake or other non-data
        # records; the stream then returns None rather than a count.
        while True:
            n = await stream.readinto(buf)
            _turn_ends[0] = ticks_add(ticks_ms(), _TURN_MS)
            if n is not None:
                return n

    def mem_free():
        return gc.mem_free()

    def no_delay(writer):
        # TCP_NODELAY: a reply written in pieces (a POP3 listing line by
        # line) went out as one segment and then waited, under Nagle's
        # algorithm, for the client's delayed ACK: 40 ms a command from a
        # Linux client, 200 ms from Windows. IPPROTO_TCP 6 and TCP_NODELAY
        # 1 in lwIP as in Linux; the unix port names neither.
        try:
            writer.s.setsockopt(6, 1, 1)
        except (AttributeError, OSError):
            pass

    def write_view(writer, view):
        # A Stream copies what the socket does not take at once, so the
        # caller may reuse the buffer behind view when this returns.
        writer.write(view)

    def drain_can_block(writer):
        # A Stream writes at once what the socket takes; only a rest left
        # in out_buf makes drain() wait.
        return writer.out_buf

    def fsync(f):
        # VfsFat's flush is FatFs f_sync: data, FAT and directory entry.
        f.flush()

    async def start_tls(reader, writer, ctx):
        # Reader and writer are one Stream; the handshake runs in its reads.
        writer.s = reader.s = ctx.wrap_socket(writer.s, server_side=True, do_handshake_on_connect=False)

    async def start_tls_client(reader, writer, ctx, server_name, timeout):
        # A client whose first TLS step is a read (implicit TLS: the server
        # greets first) never sends its ClientHello on a non-blocking wrap,
        # so the handshake runs blocking here, bounded by the timeout.
        # Certificate errors surface now, as ValueError.
        sock = writer.s
        sock.settimeout(timeout)
        tls = ctx.wrap_socket(sock, server_hostname=server_name)
        tls.setblocking(False)
        writer.s = reader.s = tls

    def mem_alloc():
        return gc.mem_alloc()

    def drop_modules(names):
        # Forgets modules so that gc takes their code back when a phase of
        # the box is over (a qstr they made stays; a later import loads them
        # afresh at no further cost). Nothing may hold their objects then,
        # nor a resident module their names.
        import sys

        for name in names:
            if sys.modules.pop(name, None) is not None:
                dot = name.rfind(".")
                try:
                    delattr(sys.modules[name[:dot]], name[dot + 1 :])
                except (AttributeError, KeyError):
                    pass
        gc.collect()

    def load_cert_chain(ctx, cert, key):
        # MicroPython's ssl takes the DER files as they are.
        ctx.load_cert_chain(cert, key)

    def peer_address(peer):
        # The unix port reports a raw sockaddr_in, the ESP32 a tuple.
        if isinstance(peer, (bytes, bytearray)) and len(peer) >= 8 and peer[0] == 2:
            return "%d.%d.%d.%d" % (peer[4], peer[5], peer[6], peer[7]), peer[2] << 8 | peer[3]
        return peer

except ImportError:  # CPython: the stand-ins live apart (never loaded on the box)
    from gateway.compat_cpython import *  # noqa: F403 # cpython-only



def peer_ip(peername):
    """The client's address as text ("a.b.c.d") from what a stream's
    get_extra_info("peername") gives on this runtime, or None. An IPv4-mapped
    IPv6 address (::ffff:a.b.c.d) is its IPv4 address. Listeners, the
    allow list, the login guard and the Received line all take this one."""
    peer = peer_address(peername)
    ip = peer[0] if isinstance(peer, (tuple, list)) else peer
    if not isinstance(ip, str):
        return None
    return ip[7:] if ip[:7].lower() == "::ffff:" else ip


# The listeners' TLS (STARTTLS on the LAN SMTP listener, STLS on POP3): one
# server context per certificate, made at start from the DER files on the
# flash (odmrgw config push makes them) and shared when both listeners name
# the same files, since each context holds its key in mbedTLS memory.
_server_contexts = {}


def server_tls(conf, what):
    """The SSLContext for conf["cert"] and conf["key"], or None unless both
    are set. A file that will not load is an error naming the key: the
    listener must not quietly fall back to passwords in clear."""
    cert, key = conf.get("cert"), conf.get("key")
    if not (cert and key):
        return None
    ctx = _server_contexts.get((cert, key))
    if ctx is None:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            load_cert_chain(ctx, cert, key)
        except (OSError, ValueError) as e:
            raise ValueError("%s.cert/%s.key: cannot load %s and %s as DER: %s" % (what, what, cert, key, e))
        _server_contexts[(cert, key)] = ctx
    return ctx
