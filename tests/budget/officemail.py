# The office day's messages, made the same way on CPython (the test) and on
# MicroPython (fill_card.py), so either side can say what a body must be.


def body(tag, size):
    return b"".join(pieces(tag, size))


def pieces(tag, size):
    """Exactly `size` bytes of CRLF lines in 8 KB pieces; no bare CR,
    however it is cut."""
    line = b"office mail line for " + tag + b" .. padding to a realistic line length\r\n"
    text = (line * (8192 // len(line) + 1))[:8190] + b"\r\n"
    left = size
    while left > 0:
        if left >= len(text):
            piece = text
        elif left == 1:
            raise ValueError("no CRLF line is 1 byte long")
        else:
            piece = text[: left - 2]
            if piece.endswith(b"\r"):
                piece = piece[:-1] + b"."
            piece += b"\r\n"
        yield piece
        left -= len(piece)


def message(tag, to, size):
    return head(tag, to) + body(tag, size)


def head(tag, to):
    return (b"From: <outside@far.test>\r\nTo: <" + to.encode() + b">\r\nSubject: " + tag + b"\r\nMessage-ID: <"
            + tag + b"@fill.test>\r\n\r\n")
