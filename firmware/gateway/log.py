# The firmware's log. Lines go to the console (stdout) and, once the board has
# attached one, to a sink such as a size-capped ring file on the card.
# Never pass a secret to these functions.
#
# A line that comes again and again (a client repeating one mistake) is
# written once, then summarised as "... repeated N times" when another line
# comes or every HELD copies: a flood must not push the lines that matter,
# such as failed logins, out of the ring. Once a clock is attached, every
# line written starts with its UTC time (ISO 8601).
HELD = 1000  # identical lines summarised in one at most
_sink = [None, None]  # the sink, and the clock for the time stamps
_last = [None, 0]  # the last line written, and its copies held back since


def attach(sink, clock=None):
    """sink(line) is called for every line; clock() gives unix seconds for
    the time stamp. None detaches. The old sink gets its summary first, and
    the new one sees the next line whole."""
    _summarise()
    _last[0] = None
    _sink[0] = sink
    _sink[1] = clock


def _write(line):
    if _sink[1]:
        from gateway.utc import iso8601

        line = "%s %s" % (iso8601(_sink[1]()), line)
    print(line)
    if _sink[0]:
        _sink[0](line)


def _summarise():
    if _last[1]:
        _write("%s ... repeated %d times" % (_last[0], _last[1]))
        _last[1] = 0


def _emit(level, msg):
    line = "%s %s" % (level, msg)
    if line == _last[0]:
        _last[1] += 1
        if _last[1] >= HELD:
            _summarise()
        return
    _summarise()
    _last[0] = line
    _write(line)


def info(msg):
    _emit("I", msg)


def warn(msg):
    _emit("W", msg)


def error(msg):
    _emit("E", msg)
