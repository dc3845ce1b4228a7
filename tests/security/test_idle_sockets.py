# Attacks that shut the office out by holding the listeners' few sessions.
import asyncio

import support
from attacker import CFG, Office, attack
from gateway import sasl
from gateway.handlers import LanHandler
from gateway.pop3 import POP3Session
from gateway.guard import Slots

# Both listeners, the spool and the test's clients (compiled from source)
# in one process; the box's own budget is the budget suite's (docs/heap.md).
MICROPYTHON_HEAP = "256k"
MICROPYTHON_TIMEOUT = 60


def test_one_address_gets_only_its_share_of_the_sessions():
    # Issue 12, 6: 3 idle connections filled the LAN SMTP listener and 8
    # filled POP3, so one machine shut the whole office out.
    office = Office()

    async def script(o):
        held = []
        for _ in range(o.cfg["smtp"]["sessions"] // 2):
            held.append(await o.smtp(helo=None))
            assert held[-1].greeting[0] == 220
        extra = await o.smtp(helo=None)
        assert extra.greeting == (421, ["4.3.2 Too many connections from your address, try later"])
        for _ in range(o.cfg["pop3"]["sessions"] // 2):
            held.append(await o.pop())
            assert held[-1].greeting.startswith("+OK")
        extra = await o.pop()
        assert extra.greeting == "-ERR [SYS/TEMP] Too many connections from your address, try later"
        for c in held:
            await c.close()

    attack(office, script)


def test_the_slots_of_a_listener_leave_room_for_other_addresses():
    slots = Slots(4)
    assert slots.take("10.0.0.66") is None and slots.take("10.0.0.66") is None
    assert slots.take("10.0.0.66") == "Too many connections from your address, try later"
    assert slots.take("10.0.0.5") is None and slots.take("10.0.0.6") is None
    assert slots.take("10.0.0.7") == "Too many connections, try later"
    for ip in ("10.0.0.66", "10.0.0.66", "10.0.0.5", "10.0.0.6"):
        slots.give(ip)
    assert slots.open == 0 and slots.by_address == {}


def test_a_session_the_heap_has_no_room_for_is_refused_before_it_starts():
    # Issue 11: with the heap nearly spent, a POP3 session failed half-way
    # (MemoryError allocating 1024 bytes in UIDL). Now it is refused at once,
    # and admitted when the room is back. The room asked for is raised past
    # the whole heap here, rather than the heap filled: the test's own
    # clients share this process and its heap.
    support.needs_micropython("gc.mem_free")
    import gc

    office = Office()

    async def script(o):
        with support.patched(Slots, ROOM=gc.mem_free() + gc.mem_alloc() + 1):
            smtp = await o.smtp(helo=None)
            assert smtp.greeting == (421, ["4.3.2 Too busy for another connection, try later"]), smtp.greeting
            pop = await o.pop()
            assert pop.greeting == "-ERR [SYS/TEMP] Too busy for another connection, try later", pop.greeting
        smtp = await o.smtp(helo=None)
        assert smtp.greeting[0] == 220
        pop = await o.pop()
        assert pop.greeting.startswith("+OK")
        for c in (smtp, pop):
            await c.close()

    attack(office, script)


def test_pop3_obeys_the_allow_list():
    # Issue 12, 6: POP3 had no allow list, so any address could hold it.
    office = Office(dict(CFG, smtp={"allow": ["10.0.0.0/8"]}))

    async def script(o):
        p = await o.pop()
        assert p.greeting == "-ERR your network may not use this server"
        assert await p.closed()
        await p.close()

    attack(office, script)


def test_noop_and_capa_do_not_keep_a_session_that_never_logs_in():
    # Issue 12, 6: CAPA reset POP3's 600 s timer for ever without counting
    # as an error; SMTP's NOOP did the same for 300 s at a time.
    office = Office()

    async def keep_alive(c, verb, cmd):
        for _ in range(40):  # 8 s at most: the limit is 0.3 s
            await asyncio.sleep(0.2)
            try:
                reply = await cmd(verb)
            except OSError:
                return True
            if reply in ((0, []), "") or reply[0] == 421 or str(reply).startswith("-ERR"):
                return True
        return False

    async def script(o):
        c = await o.smtp()
        assert await keep_alive(c, "NOOP", c.cmd)
        await c.close()
        p = await o.pop()
        assert await keep_alive(p, "CAPA", p.pop)
        await p.close()
        # A logged-in SMTP session keeps the full limit.
        c = await o.smtp()
        assert (await c.cmd("AUTH PLAIN " + sasl.plain_response("alice", "alice-pw").decode()))[0] == 235
        for _ in range(4):
            await asyncio.sleep(0.2)
            assert (await c.cmd("NOOP"))[0] == 250
        await c.close()

    with support.patched(LanHandler, login_timeout=0.3), support.patched(POP3Session, LOGIN_TIMEOUT=0.3):
        attack(office, script)
