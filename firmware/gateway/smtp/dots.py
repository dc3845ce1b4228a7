# Dot-stuffing for the box's two senders (the smarthost flush and the
# forwarder): a module of its own, so the receiver, which the ODMR pull
# always loads, does not carry it.


def stuff(write, buf, mv, n, bol):
    """Writes buf[:n] (mv: its memoryview) of a message dot-stuffed (RFC 5321
    4.5.2: a line that starts with '.' gets one more). bol: buf starts a
    line. Returns whether the next chunk starts one."""
    start = 0
    if bol and buf[0] == 46:
        write(b".")
    i = buf.find(b"\n.", 0, n)
    while i >= 0:
        write(mv[start : i + 1])
        write(b".")
        start = i + 1
        i = buf.find(b"\n.", start, n)
    write(mv[start:n])
    return buf[n - 1] == 10


def end_of_data(bol):
    """The final dot, after a CRLF of its own if the message lacked one."""
    return b".\r\n" if bol else b"\r\n.\r\n"
