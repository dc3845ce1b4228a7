# SEARCH (RFC 3501 §6.4.4), the keys mail clients send: flags, sequence and
# UID sets, dates (of arrival), sizes, header substrings, NOT, OR and lists.
# A key is parsed once into a small tuple; the messages are then tested one
# by one, a header read only for a message that reaches a header key.
from gateway.imap import mime
from gateway.imap.folder import ANSWERED, DELETED, DRAFT, FLAGGED, SEEN
from gateway.imap.parse import Bad, astring, number, sequence

_FLAGS = {"SEEN": (SEEN, 1), "UNSEEN": (SEEN, 0), "DELETED": (DELETED, 1), "UNDELETED": (DELETED, 0),
          "FLAGGED": (FLAGGED, 1), "UNFLAGGED": (FLAGGED, 0), "ANSWERED": (ANSWERED, 1), "UNANSWERED": (ANSWERED, 0),
          "DRAFT": (DRAFT, 1), "UNDRAFT": (DRAFT, 0)}
_HEADERS = ("FROM", "TO", "CC", "BCC", "SUBJECT")
_DATES = ("SINCE", "BEFORE", "ON")
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


def criteria(toks, folder):
    """The keys of a SEARCH as one ("and", [...]) tuple; Bad for a key
    this server does not know."""
    toks = list(toks)
    if toks and isinstance(toks[0], str) and toks[0].upper() == "CHARSET":
        if len(toks) < 2 or astring(toks[1]).upper() not in ("UTF-8", "US-ASCII"):
            raise Bad("[BADCHARSET (UTF-8 US-ASCII)] charset not supported")
        toks = toks[2:]
    out = []
    while toks:
        out.append(_key(toks, folder, 0))
    if not out:
        raise Bad("SEARCH needs a key")
    return ("and", out)


def _key(toks, folder, depth):
    if depth > 8:
        raise Bad("search keys nested too deep")
    tok = toks.pop(0)
    if isinstance(tok, list):
        sub = list(tok)
        keys = []
        while sub:
            keys.append(_key(sub, folder, depth + 1))
        return ("and", keys)
    if not isinstance(tok, str):
        raise Bad("a search key was expected")
    k = tok.upper()
    if k in ("ALL", "OLD"):
        return ("all",)
    if k in ("NEW", "RECENT"):
        return ("none",)  # nothing is \Recent here
    if k in _FLAGS:
        return ("flag",) + _FLAGS[k]
    if k in ("KEYWORD", "UNKEYWORD"):
        _arg(toks)
        return ("none",) if k == "KEYWORD" else ("all",)  # no keywords are kept
    if k == "NOT":
        return ("not", _key(toks, folder, depth + 1))
    if k == "OR":
        return ("or", _key(toks, folder, depth + 1), _key(toks, folder, depth + 1))
    if k == "UID":
        top = folder.uid(len(folder) - 1) if len(folder) else 0
        return ("set", folder.pick(sequence(_arg(toks), top), True))
    if k in _HEADERS:
        return ("header", k.lower().encode(), astring(_arg(toks)).encode().lower())
    if k == "HEADER":
        name = astring(_arg(toks)).encode().lower()
        return ("header", name, astring(_arg(toks)).encode().lower())
    if k in _DATES:
        return ("date", k, _day(astring(_arg(toks))))
    if k in ("LARGER", "SMALLER"):
        return ("size", k == "LARGER", number(_arg(toks)))
    if k[0].isdigit() or k[0] == "*":
        return ("set", folder.pick(sequence(tok, len(folder)), False))
    raise Bad("unknown or unsupported search key %s" % k[:20])


def _arg(toks):
    if not toks:
        raise Bad("a search key lacks its argument")
    return toks.pop(0)


def _day(text):
    """Days since 1970 of an IMAP date (1-Feb-1994)."""
    parts = text.strip('"').split("-")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit() or parts[1].upper() not in MONTHS:
        raise Bad("bad date (like 1-Feb-2026)")
    return days(int(parts[2]), MONTHS.index(parts[1].upper()) + 1, int(parts[0]))


def days(y, m, d):
    """Days since 1970-01-01 (Howard Hinnant's days-from-civil)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _names(key, out):
    """The header names any key in this tree reads."""
    if key[0] == "header" and key[1] not in out:
        out.append(key[1])
    elif key[0] in ("and",):
        for k in key[1]:
            _names(k, out)
    elif key[0] in ("not", "or"):
        for k in key[1:]:
            _names(k, out)
    return out


class Match:
    """Tests one message against a key tree."""

    def __init__(self, folder, key, buf):
        self.folder = folder
        self.key = key
        self.buf = buf
        self.names = tuple(_names(key, []))

    def __call__(self, i):
        self.i = i
        self.src = self.head = None
        try:
            return self._test(self.key)
        except KeyError:
            return False  # gone from the card since the listing
        finally:
            if self.src is not None:
                self.src.close()

    def _source(self):
        if self.src is None:
            self.src = mime.Source(self.folder.boxes, self.folder.user, self.folder.uid(self.i))
        return self.src

    def _test(self, key):
        op = key[0]
        i = self.i
        if op == "and":
            for k in key[1]:
                if not self._test(k):
                    return False
            return True
        if op == "all":
            return True
        if op == "none":
            return False
        if op == "flag":
            return bool(self.folder.flags[i] & key[1]) == bool(key[2])
        if op == "set":
            return bool(key[1][i])
        if op == "not":
            return not self._test(key[1])
        if op == "or":
            return self._test(key[1]) or self._test(key[2])
        if op == "size":
            size = self.folder.size(i)
            return size > key[2] if key[1] else size < key[2]
        if op == "date":
            day = self._source().received // 86400
            return day >= key[2] if key[1] == "SINCE" else day < key[2] if key[1] == "BEFORE" else day == key[2]
        # header substring, any case
        if self.head is None:
            src = self._source()
            self.head = mime.Header(src, 0, src.size, self.buf, self.names)
        value = self.head.fields.get(key[1])
        return value is not None and key[2] in value.lower()
