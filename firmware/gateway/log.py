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
_sink = [None, None, None]  # the sink, the clock for the time stamps, the sink's flush
_last = [None, 0]  # the last line written, and its copies held back since


def attach(sink, clock=None, flush=None):
    """sink(line) is called for every line; clock() gives unix seconds for
    the time stamp; flush() is called after each warning or error, so the
    line that explains a crash is on the card. None detaches. The old sink
    gets its summary first, and the new one sees the next line whole."""
    _summarise()
    _last[0] = None
    _sink[0] = sink
    _sink[1] = clock
    _sink[2] = flush


def _write(line):
    if _sink[1]:
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
    if level != "I" and _sink[2]:
        _sink[2]()


def info(msg):
    _emit("I", msg)


def warn(msg):
    _emit("W", msg)


def error(msg):
    _emit("E", msg)


# Calendar dates from unix seconds, by arithmetic: the ESP32's time
# functions count from 2000 on older releases, the unix port's from 1970,
# and the box's clock is UTC once NTP has set it.
def civil(t):
    """(year, month, day, hour, minute, second, days since 1970) for unix
    seconds t (Howard Hinnant's civil-from-days)."""
    t = int(t)
    days, secs = divmod(t, 86400)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    return y, m, d, secs // 3600, secs // 60 % 60, secs % 60, days


def rfc5322_date(t):
    """'Sun, 29 Nov 2026 17:03:44 +0000' from unix seconds (Received lines,
    reports). The names are slices of one string each: tuples of them would
    stay in the heap of every box that never writes a report."""
    y, m, d, hh, mm, ss, days = civil(t)
    w = days % 7 * 3  # 1970-01-01 was a Thursday
    return "%s, %02d %s %d %02d:%02d:%02d +0000" % (
        "ThuFriSatSunMonTueWed"[w : w + 3], d, "JanFebMarAprMayJunJulAugSepOctNovDec"[3 * m - 3 : 3 * m], y, hh, mm, ss)


def iso8601(t):
    """'2026-11-29T17:03:44Z'."""
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % civil(t)[:6]
