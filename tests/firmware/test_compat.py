import asyncio

import support
from gateway import compat


def test_const_is_its_value():
    assert compat.const(7) == 7


def test_ticks_diff_wraps():
    t = compat.ticks_ms()
    later = compat.ticks_add(t, 1500)
    assert compat.ticks_diff(later, t) == 1500
    assert compat.ticks_diff(t, later) == -1500


def test_readinto_reads_a_socket_into_a_fixed_buffer():
    got = []

    async def serve(reader, writer):
        buf = bytearray(4)
        n = await compat.readinto(reader, memoryview(buf))
        got.append(bytes(buf[:n]))
        writer.close()
        await writer.wait_closed()

    async def main():
        server, port = await support.start_server(serve)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ab")
        await writer.drain()
        await reader.read(1)  # EOF once the handler closed
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    support.run(main())
    assert got == [b"ab"]
