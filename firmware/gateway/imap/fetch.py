# FETCH (RFC 3501 §6.4.5): what a client asks of each message, streamed from
# the card through the session's buffer. A section's length is known before
# its literal goes out: whole ranges are counted, a header's selected fields
# are walked twice (count, then send), never held.
from gateway.compat import const
from gateway.imap import mime
from gateway.imap.folder import SEEN, flag_names
from gateway.imap.parse import Bad, tokens
from gateway.log import civil

_DRAIN = const(2048)
_SIMPLE = ("FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "BODY")
_MACROS = {"FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"), "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
           "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY")}
# RFC822 items are the sections they stand for: (section, peek).
_RFC822 = {"RFC822": ("", False), "RFC822.HEADER": ("HEADER", True), "RFC822.TEXT": ("TEXT", False)}
_MONTHS = b"JanFebMarAprMayJunJulAugSepOctNovDec"


class Item:
    """One fetch att: .name (FLAGS, UID, ..., or SECTION), and for a
    section its text as the client wrote it, the partial range, whether it
    leaves \\Seen alone, and the label its data goes out under."""

    def __init__(self, name, section=None, peek=True, start=-1, length=0, label=None):
        self.name, self.section, self.peek, self.start, self.length = name, section, peek, start, length
        self.label = label


def items(tok, by_uid):
    """The Items of a FETCH's att argument; UID FETCH always sends the UID."""
    if isinstance(tok, str) and tok.upper() in _MACROS:
        atoms = _MACROS[tok.upper()]
    elif isinstance(tok, str):
        atoms = (tok,)
    elif isinstance(tok, list) and tok and all(isinstance(a, str) for a in tok):
        atoms = tok
    else:
        raise Bad("FETCH needs data items")
    out = [Item("UID")] if by_uid else []
    for a in atoms:
        out.append(_item(a))
    return out


def _item(atom):
    u = atom.upper()
    br = u.find("[")
    if br < 0:
        if u in _RFC822:
            section, peek = _RFC822[u]
            return Item("SECTION", section, peek, label=u.encode())
        if u not in _SIMPLE:
            raise Bad("unknown FETCH item")
        return Item(u)
    name = u[:br]
    close = u.rfind("]")
    if name not in ("BODY", "BODY.PEEK") or close < br:
        raise Bad("unknown FETCH item")
    section = atom[br + 1 : close]
    rest = u[close + 1 :]
    start, length = -1, 0
    if rest:
        a, dot, b = rest[1:-1].partition(".")
        if rest[0] != "<" or rest[-1] != ">" or not a.isdigit() or not b.isdigit() or len(a) > 10 or len(b) > 10:
            raise Bad("bad partial range")
        start, length = int(a), int(b)
    _spec(section)  # checked now: a bad one is BAD before any data goes out
    return Item("SECTION", section, name == "BODY.PEEK", start, length, b"BODY[%s]" % section.encode())


def _spec(section):
    """(part number, what, field names) of a section: what is "", HEADER,
    TEXT, MIME, HEADER.FIELDS or HEADER.FIELDS.NOT."""
    text, _, fields = section.partition(" ")
    number = []
    parts = text.split(".") if text else []
    while parts and parts[0].isdigit() and len(parts[0]) < 6 and parts[0][0] != "0":
        number.append(parts.pop(0))
    what = ".".join(parts).upper()
    if what not in ("", "HEADER", "TEXT", "MIME", "HEADER.FIELDS", "HEADER.FIELDS.NOT") or what == "MIME" and not number:
        raise Bad("bad section")
    names = None
    if what.startswith("HEADER.FIELDS"):
        raw = fields.encode()
        toks = tokens(raw, len(raw))
        if len(toks) != 1 or not isinstance(toks[0], list) or not toks[0]:
            raise Bad("HEADER.FIELDS needs a list of field names")
        names = tuple((n.encode() if isinstance(n, str) else n).lower() for n in toks[0])
    elif fields:
        raise Bad("bad section")
    return ".".join(number), what, names


def internaldate(t):
    y, m, d, hh, mi, s, _ = civil(t)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (d, _MONTHS[3 * m - 3 : 3 * m], y, hh, mi, s)


class Fetcher:
    """Writes the FETCH responses of one command."""

    def __init__(self, session, folder, items):
        self.s = session
        self.w = session.writer
        self.folder = folder
        self.items = items
        self.buf = session.body
        self.unsent = 0

    async def message(self, i):
        f = self.folder
        src = None
        if any(it.name not in ("UID", "FLAGS", "RFC822.SIZE") for it in self.items):
            try:
                src = mime.Source(f.boxes, f.user, f.uid(i))
            except KeyError:
                return  # gone since the listing (POP3 deleted it): the next NOOP says so
        parts = None
        w = self.w
        w.write(b"* %d FETCH (" % (i + 1))
        sep = b""
        flags_sent = changed = False
        try:
            for it in self.items:
                w.write(sep)
                sep = b" "
                name = it.name
                if name == "UID":
                    w.write(b"UID %d" % f.uid(i))
                elif name == "FLAGS":
                    w.write(b"FLAGS (%s)" % flag_names(f.flags[i]).encode())
                    flags_sent = True
                elif name == "RFC822.SIZE":
                    w.write(b"RFC822.SIZE %d" % f.size(i))
                elif name == "INTERNALDATE":
                    w.write(b"INTERNALDATE " + internaldate(src.received))
                elif name == "ENVELOPE":
                    w.write(b"ENVELOPE " + mime.envelope(src, self.buf))
                elif name == "BODYSTRUCTURE" or name == "BODY":
                    parts = parts or mime.structure(src, self.buf)
                    w.write(name.encode() + b" " + mime.bodystructure(parts))
                else:
                    changed = not it.peek and f.seen(i) or changed
                    parts = await self._section(src, it, parts)
                await self._drain()
            if changed and not flags_sent:  # a body fetch set \Seen: the client hears of it
                w.write(b" FLAGS (%s)" % flag_names(f.flags[i]).encode())
        finally:
            if src is not None:
                src.close()
        w.write(b")\r\n")
        await self._drain()

    async def _drain(self):
        if self.unsent >= _DRAIN or not self.unsent:
            await self.w.drain()
            self.unsent = 0

    async def _section(self, src, it, parts):
        """Sends one section's literal; returns the parts (scanned if it
        needed them) for the next item of this message."""
        number, what, names = _spec(it.section)
        start, end = 0, src.size
        if number:
            parts = parts or mime.structure(src, self.buf)
            p = mime.find(parts, number)
            if p is None:
                start = end = 0
            elif what == "MIME":
                start, end = p.head, p.body
            else:
                start, end = p.body, p.end
                if p is parts[0] and not what:
                    start = mime.body_start(src, 0, src.size, self.buf)
        if what in ("HEADER", "TEXT"):  # HEADER.FIELDS stops at the blank line itself
            body = mime.body_start(src, start, end, self.buf)
            if what == "TEXT":
                start = body
            elif what == "HEADER":
                end = body
        if names:
            ranges = lambda: _with_blank(mime.field_ranges(src, start, end, self.buf, names, what.endswith("NOT")))
        else:
            ranges = lambda: ((start, end),)
        total = 0
        for a, b in ranges():
            total += b - a if a >= 0 else 2
        lo = hi = 0
        if it.start >= 0:
            lo = min(it.start, total)
            hi = min(total, lo + it.length)
            label = it.label + b"<%d>" % it.start
        else:
            lo, hi = 0, total
            label = it.label
        self.w.write(label + b" {%d}\r\n" % (hi - lo))
        at = 0
        for a, b in ranges():
            n = b - a if a >= 0 else 2
            x, y = max(lo, at), min(hi, at + n)
            if x < y:
                if a < 0:
                    self.w.write(b"\r\n"[x - at : y - at])
                else:
                    await self._copy(src, a + x - at, a + y - at)
            at += n
            if at >= hi:
                break
        return parts

    async def _copy(self, src, a, b):
        mv = memoryview(self.buf)
        while a < b:
            n = src.readinto(a, mv[: min(len(mv), b - a)])
            if not n:
                raise OSError("message shorter than its record says")
            self.w.write(mv[:n])
            a += n
            self.unsent += n
            if self.unsent >= _DRAIN:
                await self.w.drain()
                self.unsent = 0


def _with_blank(ranges):
    for r in ranges:
        yield r
    yield -1, -1
