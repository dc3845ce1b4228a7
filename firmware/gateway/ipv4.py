# The one IPv4 parser: the config's checks, the LAN allow list and the
# network keys all read addresses through it. By hand: MicroPython has no
# ipaddress module.


def value(text):
    """A dotted IPv4 address as a 32-bit int. Raises ValueError."""
    parts = text.split(".") if isinstance(text, str) else ()
    if len(parts) != 4:
        raise ValueError("not an IPv4 address: %r" % (text,))
    v = 0
    for p in parts:
        if not p.isdigit() or int(p) > 255:
            raise ValueError("not an IPv4 address: %r" % (text,))
        v = (v << 8) | int(p)
    return v


def network(text):
    """(network, mask) as 32-bit ints from "a.b.c.d/n" (or a bare address).
    Raises ValueError."""
    addr, _, bits = text.partition("/")
    if bits and not bits.isdigit() or int(bits or 32) > 32:
        raise ValueError("bad prefix length in %r" % (text,))
    mask = (0xFFFFFFFF << (32 - int(bits or 32))) & 0xFFFFFFFF
    return value(addr) & mask, mask


def is_address(text):
    try:
        value(text)
        return True
    except ValueError:
        return False


def is_network(text):
    try:
        network(text)
        return True
    except ValueError:
        return False
