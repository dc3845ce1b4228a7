# A fault of the unix port's select.poll that the box's own port does not
# have, kept away from the simulated board (main.py calls this at start).
from micropython import const

# Sockets more than the box ever has open at once: every session the config
# allows, the listeners, the console and the poll's own connections.
POLL_SPARE = const(16)


def presize_poll(sessions):
    """The unix port's select.poll keeps the sockets that have a file
    descriptor in an array, and when the array has to move to grow it
    repoints every entry, also those without one: a TLS socket's entry then
    points anywhere, and the next poll crashes the process (extmod/modselect.c,
    poll_set_add_fd; tests/host/test_sim.py replays it). The ESP32 port polls
    without that array. Grown once at start for more sockets than the box
    opens, the array never moves."""
    from asyncio import core

    poller = core._io_queue.poller
    first = 1 << 20  # numbers no real descriptor has; never polled
    for fd in range(first, first + sessions + POLL_SPARE):
        poller.register(fd, 0)
    for fd in range(first, first + sessions + POLL_SPARE):
        poller.unregister(fd)
