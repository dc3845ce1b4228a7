# Calendar dates from unix seconds, by arithmetic: the ESP32's time
# functions count from 2000, the unix port's from 1970, and the box's clock
# is UTC once NTP has set it.


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


def iso8601(t):
    """'2026-11-29T17:03:44Z'."""
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % civil(t)[:6]
