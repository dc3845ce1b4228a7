# The firmware's log. Lines go to the console (stdout) and, once the board has
# attached one, to a sink such as a size-capped ring file on the card.
# Never pass a secret to these functions.
_sink = [None]


def attach(sink):
    """sink(line) is called for every line; None detaches."""
    _sink[0] = sink


def _emit(level, msg):
    line = "%s %s" % (level, msg)
    print(line)
    if _sink[0]:
        _sink[0](line)


def info(msg):
    _emit("I", msg)


def warn(msg):
    _emit("W", msg)


def error(msg):
    _emit("E", msg)
