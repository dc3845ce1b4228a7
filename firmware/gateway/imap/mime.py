# A stored message as IMAP reads it, in bounded memory: its lines through
# one small buffer, its header fields unfolded and cut at FIELD bytes, its
# MIME structure from one streamed pass (at most MAX_PARTS parts, MAX_DEPTH
# levels of multipart; deeper or further parts count as part of the one
# holding them). ENVELOPE and BODYSTRUCTURE are built from these.
from gateway.compat import const
from gateway.imap.parse import quote

FIELD = const(256)  # bytes kept of one header field's value
MAX_PARTS = const(16)
MAX_DEPTH = const(4)
_MIME = (b"content-type", b"content-transfer-encoding", b"content-id", b"content-description")
_ENVELOPE = (b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc", b"in-reply-to",
             b"message-id")


class Source:
    """One stored message as IMAP shows it: the Return-Path line, then the
    message as received (what POP3's RETR sends, un-stuffed)."""

    def __init__(self, boxes, user, uid):
        got = boxes.info(user, "%08x" % uid, True)
        if not got:
            raise KeyError(uid)
        (self.base, body, self.received, self.rp), self.f = got
        self.size = len(self.rp) + body

    def readinto(self, pos, mv):
        """Bytes of the message from offset pos into mv; 0 at its end."""
        n = min(len(mv), self.size - pos)
        if n <= 0:
            return 0
        r = len(self.rp)
        if pos < r:
            n = min(n, r - pos)
            mv[:n] = self.rp[pos : pos + n]
            return n
        self.f.seek(self.base + pos - r)
        return self.f.readinto(mv[:n])

    def close(self):
        self.f.close()


def lines(src, start, end, buf):
    """(offset, line) for each line of src[start:end]. line is a memoryview
    of buf, valid until the next step, holding at most len(buf) bytes of
    the line (its LF too when it fits)."""
    mv = memoryview(buf)
    a = b = 0  # buf[a:b]: read, not yet handed out; buf[a] is at offset pos
    pos = fill = start
    skip = False  # inside a line too long for buf, whose start went out
    while True:
        i = buf.find(b"\n", a, b)
        if i >= 0:
            if not skip:
                yield pos, mv[a : i + 1]
            skip = False
            pos += i + 1 - a
            a = i + 1
            continue
        if skip:
            pos += b - a
            a = b = 0
        elif a:
            mv[: b - a] = mv[a:b]
            b -= a
            a = 0
        if b == len(buf):
            yield pos, mv[:b]
            skip = True
            pos += b
            a = b = 0
        n = src.readinto(fill, mv[b : b + min(len(buf) - b, end - fill)]) if fill < end else 0
        if not n:
            if b > a and not skip:
                yield pos, mv[a:b]
            return
        fill += n
        b += n


def _blank(line):
    return line[0] == 10 or line[0] == 13 and len(line) > 1 and line[1] == 10


def body_start(src, start, end, buf):
    """The offset where the body of the entity at start begins: after its
    blank line, or end. The whole chunks read are searched at once: a
    header's end costs no step per line."""
    mv = memoryview(buf)
    buf[0] = 10  # the header's first line starts as if after a line end
    keep = 1  # bytes in buf before the next read: buf[k] is at offset pos - keep + k
    pos = start
    while pos < end:
        n = src.readinto(pos, mv[keep : keep + min(len(buf) - keep, end - pos)])
        if not n:
            break
        stop = keep + n
        i = buf.find(b"\n\n", 0, stop)
        j = buf.find(b"\n\r\n", 0, stop)
        if i >= 0 and (j < 0 or i < j):
            return pos - keep + i + 2
        if j >= 0:
            return pos - keep + j + 3
        pos += n
        keep = min(2, stop)  # a blank line may start in one chunk and end in the next
        mv[:keep] = mv[stop - keep : stop]
    return end


class Header:
    """The fields named in `want` (lower-case bytes) of the header starting
    at offset start, unfolded, the first of each name; .end is the offset
    where the body begins (after the blank line, or the end)."""

    def __init__(self, src, start, end, buf, want):
        self.fields = {}
        self.end = end
        name = None
        for pos, line in lines(src, start, end, buf):
            if _blank(line):
                self.end = pos + len(line)
                break
            if line[0] == 32 or line[0] == 9:
                if name is not None:
                    self._add(name, bytes(line).rstrip(b"\r\n"))
                continue
            text = bytes(line)
            colon = text.find(b":")
            name = text[:colon].strip().lower() if colon > 0 else None
            if name not in want or name in self.fields:
                name = None
                continue
            self.fields[name] = b""
            self._add(name, text[colon + 1 :].rstrip(b"\r\n"))
        self.want = None

    def _add(self, name, text):
        value = self.fields[name]
        room = FIELD - len(value)
        if room > 0:
            self.fields[name] = value + text[:room]

    def get(self, name):
        v = self.fields.get(name)
        return v.strip() if v is not None else None


def field_ranges(src, start, end, buf, names, negate):
    """(start, end) offsets of the header lines whose field is (or, with
    negate, is not) one of names (lower-case bytes), with their
    continuation lines, adjacent ones merged; the blank line is not
    included. A generator: the fields of a long header need no list."""
    run = -1  # start of the run being collected
    keep = False
    for pos, line in lines(src, start, end, buf):
        if _blank(line):
            break
        if not (line[0] == 32 or line[0] == 9):
            text = bytes(line[:80])
            colon = text.find(b":")
            keep = ((text[:colon].strip().lower() if colon > 0 else b"") in names) != negate
        if keep and run < 0:
            run = pos
        elif not keep and run >= 0:
            yield run, pos
            run = -1
    else:
        pos = end
    if run >= 0:
        yield run, pos


# --- MIME structure -------------------------------------------------------------------

class Part:
    """One MIME part: number ("" for the message, "1.2" for a part),
    offsets of its header, body and end, the body's line count and the
    MIME fields of its header."""

    def __init__(self, number, head):
        self.number = number
        self.head = head
        self.body = self.end = head
        self.lines = 0
        self.fields = {}
        self.children = 0

    def content_type(self):
        """(type, subtype, [(name, value)...]) upper-case type names; text/plain
        when there is no Content-Type (RFC 2045 §5.2)."""
        value = self.fields.get(b"content-type") or b"text/plain; charset=us-ascii"
        main, _, rest = value.partition(b";")
        t, _, s = main.strip().partition(b"/")
        params = _params(rest)
        if not t or not s:
            t, s = b"text", b"plain"
        return t.strip().upper(), s.strip().upper(), params

    def multipart(self):
        t, _, params = self.content_type()
        if t != b"MULTIPART":
            return None
        for k, v in params:
            if k == b"BOUNDARY" and v:
                return v
        return None


def _params(text):
    out = []
    while text:
        semi = _unquoted_find(text, b";")
        item, text = text[:semi], text[semi + 1 :] if semi < len(text) else b""
        k, eq, v = item.partition(b"=")
        k, v = k.strip(), v.strip()
        if eq and k:
            if v[:1] == b'"':
                v = v[1:-1] if v[-1:] == b'"' and len(v) > 1 else v[1:]
            out.append((k.upper(), v))
    return out


def _unquoted_find(text, ch):
    q = False
    for i in range(len(text)):
        c = text[i : i + 1]
        if c == b'"':
            q = not q
        elif c == ch and not q:
            return i
    return len(text)


def structure(src, buf):
    """The message's parts, the message itself first, in order; a part's
    children follow it."""
    top = Part("", 0)
    parts = [top]
    stack = []  # (boundary, part) of the open multiparts
    cur = top
    state = 0  # 0: in cur's header, 1: in cur's body, 2: between parts
    name = None
    eol = 0  # length of the last line's line ending
    for pos, line in lines(src, 0, src.size, buf):
        if state == 0:
            if _blank(line):
                cur.body = cur.end = pos + len(line)
                bound = cur.multipart()
                if bound and len(stack) < MAX_DEPTH and cur.number.count(".") < MAX_DEPTH:
                    stack.append((b"--" + bound, cur))
                    state = 2
                else:
                    state = 1
                eol = 0
                continue
            if line[0] == 32 or line[0] == 9:
                if name is not None:
                    v = cur.fields[name]
                    cur.fields[name] = (v + bytes(line).rstrip(b"\r\n"))[:FIELD]
                continue
            text = bytes(line)
            colon = text.find(b":")
            name = text[:colon].strip().lower() if colon > 0 else None
            if name in _MIME and name not in cur.fields:
                cur.fields[name] = text[colon + 1 :].rstrip(b"\r\n").strip()[:FIELD]
            else:
                name = None
            continue
        level = _boundary(stack, line)
        if level < 0:
            if state == 1:
                cur.lines += 1
                cur.end = pos + len(line)
            eol = 2 if len(line) > 1 and line[-2] == 13 else 1 if line[-1] == 10 else 0
            continue
        if state == 1:
            cur.end = max(cur.body, pos - eol)
        while len(stack) > level + 1:
            stack.pop()[1].end = pos
        bound, parent = stack[level]
        closing = bytes(line[len(bound) : len(bound) + 2]) == b"--"
        if closing:
            stack.pop()
            parent.end = pos + len(line)
            state = 2
        elif len(parts) < MAX_PARTS:
            parent.children += 1
            cur = Part(("%s.%d" % (parent.number, parent.children)).lstrip("."), pos + len(line))
            parts.append(cur)
            state = 0
            name = None
        else:
            state = 2
        eol = 0
    for bound, parent in stack:
        parent.end = src.size
    if state < 2:
        cur.end = max(cur.end, cur.body) if state else src.size
    if cur is top and state == 1:
        top.end = src.size
    return parts


def _boundary(stack, line):
    """The level of the open multipart whose boundary this line is, or -1."""
    if len(line) < 3 or line[0] != 45 or line[1] != 45:
        return -1
    text = bytes(line).rstrip(b"\r\n \t")
    for level in range(len(stack) - 1, -1, -1):
        b = stack[level][0]
        if text == b or text == b + b"--":
            return level
    return -1


def find(parts, number):
    """The part of section number "1.2"; a message that is not multipart
    is its own part 1 (RFC 3501 §6.4.5). None when there is none."""
    if number == "1" and parts[0].multipart() is None:
        return parts[0]
    for p in parts[1:]:
        if p.number == number:
            return p
    return None


def bodystructure(parts):
    return _bodystructure(parts, 0)[0]


def _bodystructure(parts, i):
    """(the BODYSTRUCTURE of parts[i], the index after its subtree)."""
    p = parts[i]
    t, s, params = p.content_type()
    prefix = p.number + "." if p.number else ""
    if p.multipart() is not None and _child(parts, i + 1, prefix):
        out = []
        j = i + 1
        while _child(parts, j, prefix):
            sub, j = _bodystructure(parts, j)
            out.append(sub)
        return b"(" + b"".join(out) + b" " + quote(s) + b")", j
    if t == b"MULTIPART" or t == b"MESSAGE" and s == b"RFC822":
        # Shown as an opaque part: a multipart past the depth limit, and an
        # attached message, whose own envelope and structure are not scanned.
        t, s, params = b"APPLICATION", b"OCTET-STREAM", [kv for kv in params if kv[0] == b"NAME"]
    plist = b"(" + b" ".join(quote(k) + b" " + quote(v) for k, v in params) + b")" if params else b"NIL"
    enc = p.fields.get(b"content-transfer-encoding") or b"7BIT"
    out = b"(%s %s %s %s %s %s %d" % (quote(t), quote(s), plist, quote(p.fields.get(b"content-id")),
                                      quote(p.fields.get(b"content-description")), quote(enc.upper()), p.end - p.body)
    if t == b"TEXT":
        out += b" %d" % p.lines
    return out + b")", i + 1


def _child(parts, j, prefix):
    return j < len(parts) and parts[j].number.startswith(prefix) and parts[j].number.count(".") == prefix.count(".")


def envelope(src, buf):
    """The ENVELOPE of the message (RFC 3501 §7.4.2)."""
    h = Header(src, 0, src.size, buf, _ENVELOPE)
    frm = h.get(b"from")
    return b"(%s %s %s %s %s %s %s %s %s %s)" % (
        quote(h.get(b"date")), quote(h.get(b"subject")), addresses(frm), addresses(h.get(b"sender") or frm),
        addresses(h.get(b"reply-to") or frm), addresses(h.get(b"to")), addresses(h.get(b"cc")),
        addresses(h.get(b"bcc")), quote(h.get(b"in-reply-to")), quote(h.get(b"message-id")))


def addresses(value):
    """An address list as ((name NIL mailbox host) ...), NIL when empty.
    Group names (undisclosed-recipients:;) are left out."""
    if not value:
        return b"NIL"
    out = []
    for item in _split(value):
        item = item.strip()
        lt = item.find(b"<")
        colon = item.find(b":")
        if colon >= 0 and (lt < 0 or colon < lt) and item.find(b"@") > colon or item.endswith(b":;"):
            item = item[colon + 1 :].strip()
            lt = item.find(b"<")
        item = item.rstrip(b";").strip()
        if not item:
            continue
        if lt >= 0:
            gt = item.find(b">", lt)
            addr = item[lt + 1 : gt if gt > 0 else len(item)].strip()
            name = item[:lt].strip().strip(b'"').strip() or None
        else:
            addr, name = item, None
        mailbox, at, host = addr.rpartition(b"@")
        if not at:
            mailbox, host = addr, None
        out.append(b"(%s NIL %s %s)" % (quote(name), quote(mailbox), quote(host)))
    return b"(" + b"".join(out) + b")" if out else b"NIL"


def _split(value):
    """The comma-separated items of an address list (commas inside quotes
    or angle brackets do not split)."""
    start = 0
    q = angle = False
    for i in range(len(value)):
        c = value[i]
        if c == 34:
            q = not q
        elif not q and c == 60:
            angle = True
        elif not q and c == 62:
            angle = False
        elif c == 44 and not q and not angle:
            yield value[start:i]
            start = i + 1
    yield value[start:]
