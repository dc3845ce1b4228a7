# Sending mail over an open SMTPClient (the outbound flush to the
# smarthost): MAIL, RCPT, DATA with PIPELINING when offered, SIZE respected,
# the body streamed from the spool dot-stuffed through one fixed buffer. A
# module of its own, so an ODMR pull (which sends no mail) never loads it.
from gateway.smtp import dots
from gateway.wire import SMTPError


def max_size(client):
    try:
        return int(client.ext.get("SIZE", "0").split()[0])
    except (ValueError, IndexError):
        return 0


class Result:
    """One recipient's fate: .address, .code and .text of the reply that
    decided it; .delivered when that was the server's 2xx."""

    def __init__(self, address, code, text):
        self.address = address
        self.code = code
        self.text = text
        self.delivered = 200 <= code < 300


async def send_message(client, mail_from, rcpts, body, size):
    """Sends one message; returns a Result per recipient, in order. A
    recipient is delivered only if its own code is 2xx: the RCPT's 2xx
    and then the server's 250 after the final dot. Connection failures
    raise SMTPError (the caller keeps the message)."""
    limit = max_size(client)
    if limit and size > limit:
        text = "5.3.4 The message (%d bytes) is larger than %s accepts (%d bytes)" % (size, client.what, limit)
        return [Result(a, 552, text) for a in rcpts]
    params = ""
    if "SIZE" in client.ext:
        params += " SIZE=%d" % size
    if "8BITMIME" in client.ext:
        params += " BODY=8BITMIME"
    cmds = ["MAIL FROM:<%s>%s" % (mail_from, params)]
    for a in rcpts:
        cmds.append("RCPT TO:<%s>" % a)
    cmds.append("DATA")
    replies = []
    if "PIPELINING" in client.ext:
        # One write for the whole group (RFC 2920), then the replies in order.
        await client.send("".join(cmd + "\r\n" for cmd in cmds).encode())
        for cmd in cmds:
            replies.append(await client.reply(client.data_init_timeout if cmd == "DATA" else None, "reply to " + cmd[:4]))
    else:
        replies.append(await client.command(cmds[0]))
        if replies[0][0] < 400:
            for cmd in cmds[1:-1]:
                replies.append(await client.command(cmd))
            if any(code < 300 for code, _ in replies[1:]):
                replies.append(await client.command("DATA", client.data_init_timeout))
    return await _finish(client, rcpts, replies, body)


async def _finish(client, rcpts, replies, body):
    """The Results: a recipient the RCPT refused keeps that reply; one it
    took gets what decided the message (DATA's refusal, or the reply to
    the final dot)."""
    mail = replies[0]
    if mail[0] >= 400:
        await _rset(client)
        return [Result(a, mail[0], " ".join(mail[1])) for a in rcpts]
    n = len(rcpts)
    per_rcpt = [replies[1 + i] if 1 + i < len(replies) else (503, ["not tried"]) for i in range(n)]
    data = replies[1 + n] if len(replies) > 1 + n else None
    final = None
    if data is None or data[0] != 354:
        await _rset(client)
        final = data or (503, ["DATA not sent"])
    elif not any(code < 300 for code, _ in per_rcpt):
        # The server said 354 although every RCPT failed: end the empty
        # transaction cleanly (RFC 2920 3.1).
        await client.send(b".\r\n")
        await client.reply(client.data_end_timeout, "reply to the final dot")
    else:
        await _body(client, body)
        final = await client.reply(client.data_end_timeout, "reply to the final dot")
    out = []
    for a, (code, lines) in zip(rcpts, per_rcpt):
        if code < 300 and final:
            code, lines = final
        out.append(Result(a, code, " ".join(lines)))
    return out


async def _body(client, body):
    """Streams the message dot-stuffed: a line that starts with '.' gets
    one more; ends with CRLF.CRLF (adding a CRLF if the body lacks one)."""
    if client.buf is None:
        client.buf = bytearray(client.chunk_size)
    buf = client.buf
    mv = memoryview(buf)
    bol = True
    while True:
        n = body.readinto(buf)
        if not n:
            break
        bol = dots.stuff(client.writer.write, buf, mv, n, bol)
        await client.send(b"", client.data_block_timeout)
    await client.send(dots.end_of_data(bol), client.data_block_timeout)


async def _rset(client):
    code, lines = await client.command("RSET")
    if code != 250:
        raise SMTPError(code, "%s refused RSET: %s" % (client.what, " ".join(lines)))
