# IMAP command syntax (RFC 3501 §9): a command, with its literals already
# read into the session's command buffer, becomes a list of tokens. Atoms
# are str, quoted strings and literals bytes, parenthesised lists lists.
# A literal sits in the buffer as NUL, its length in 8 digits, its bytes:
# a client's own NUL is refused before it gets there (read_command).
from gateway.compat import const

_DEPTH = const(8)  # nested parentheses a command may have
_MARK = const(0)


class Bad(Exception):
    """A command that cannot be parsed: answered BAD, the session goes on."""


# Atom characters (RFC 3501 atom-char, plus the list wildcards % and *, "]"
# for the section of a fetch att and the backslash of a flag), one flag per
# byte value below 128.
_ATOM = bytearray(128)
for _c in range(33, 127):
    _ATOM[_c] = 1
for _c in b'(){" ':
    _ATOM[_c] = 0


def tokens(buf, n, i=0):
    """The tokens of buf[i:n]. A fetch att keeps its section as part of the
    atom, spaces and parentheses too: BODY.PEEK[HEADER.FIELDS (From)]<0.9>."""
    out = []
    stack = []
    while i < n:
        c = buf[i]
        if c == 32:
            i += 1
            continue
        if c == 40:  # (
            if len(stack) >= _DEPTH:
                raise Bad("too many nested parentheses")
            new = []
            out.append(new)
            stack.append(out)
            out = new
            i += 1
        elif c == 41:  # )
            if not stack:
                raise Bad("unbalanced parentheses")
            out = stack.pop()
            i += 1
        elif c == 34:  # "
            i = _quoted(buf, n, i + 1, out)
        elif c == _MARK:
            size = int(bytes(buf[i + 1 : i + 9]))
            out.append(bytes(buf[i + 9 : i + 9 + size]))
            i += 9 + size
        elif c < 128 and _ATOM[c]:
            j = i
            while j < n and buf[j] < 128 and _ATOM[buf[j]]:
                if buf[j] == 91:  # [ : the section runs to its ]
                    k = buf.find(b"]", j, n)
                    if k < 0:
                        raise Bad("missing ] in a section")
                    j = k
                j += 1
            out.append(bytes(buf[i:j]).decode())
            i = j
        else:
            raise Bad("unexpected character in the command")
    if stack:
        raise Bad("unbalanced parentheses")
    return out


def _quoted(buf, n, i, out):
    text = bytearray()
    while i < n:
        c = buf[i]
        if c == 34:
            out.append(bytes(text))
            return i + 1
        if c == 92:  # backslash quotes " and itself only
            i += 1
            if i >= n or buf[i] not in (34, 92):
                raise Bad("bad escape in a quoted string")
            c = buf[i]
        text.append(c)
        i += 1
    raise Bad("unterminated quoted string")


def astring(tok):
    """A str from an atom, quoted string or literal; Bad otherwise."""
    if isinstance(tok, str):
        return tok
    if isinstance(tok, bytes):
        try:
            return tok.decode()
        except UnicodeError:
            raise Bad("not UTF-8 text")
    raise Bad("a string was expected")


def number(tok):
    if not isinstance(tok, str) or not tok.isdigit() or len(tok) > 10:
        raise Bad("a number was expected")
    return int(tok)


def sequence(tok, top):
    """The (low, high) ranges of a sequence set, "*" as top; Bad if it is
    none. A range is given in either order (RFC 3501 §9 seq-range)."""
    if not isinstance(tok, str) or not tok:
        raise Bad("a sequence set was expected")
    out = []
    for part in tok.split(","):
        a, colon, b = part.partition(":")
        lo = _seq_number(a, top)
        hi = _seq_number(b, top) if colon else lo
        out.append((lo, hi) if lo <= hi else (hi, lo))
    return out


def _seq_number(text, top):
    if text == "*":
        return top
    if not text.isdigit() or len(text) > 10 or text[0] == "0":
        raise Bad("bad sequence set")
    return int(text)


def quote(text):
    """An IMAP string for bytes or str: NIL for None, quoted when it is
    plain printable ASCII, a literal otherwise."""
    if text is None:
        return b"NIL"
    if isinstance(text, str):
        text = text.encode()
    for c in text:
        if c < 32 or c > 126:
            return b"{%d}\r\n%s" % (len(text), text)
    return b'"' + text.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
