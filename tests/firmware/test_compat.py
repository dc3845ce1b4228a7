import asyncio

import support
from gateway import compat


def test_a_dropped_module_gives_its_code_back_and_loads_again():
    import sys

    import gateway.dsn

    if support.MICROPYTHON:
        import gc

        gc.collect()
        before = gc.mem_alloc()
        compat.drop_modules(("gateway.dsn",))
        assert "gateway.dsn" not in sys.modules and gc.mem_alloc() < before - 1024
    else:  # CPython keeps it: its tests hold classes across phases
        compat.drop_modules(("gateway.dsn",))
        assert "gateway.dsn" in sys.modules
    from gateway import dsn

    assert "gateway.dsn" in sys.modules
    assert dsn.status_of(550, "5.1.1 no such user") == "5.1.1"  # the module loaded afresh works


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
