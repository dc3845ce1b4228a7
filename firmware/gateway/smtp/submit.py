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


async def send_message(client, mail_from, rcpts, body, size):
    """Sends one message; returns [[address, code, text]] per recipient.
    A recipient is delivered only if its own code is 250: the RCPT's 2xx
    and then the server's 250 after the final dot. Connection failures
    raise SMTPError (the caller keeps the message)."""
    limit = max_size(client)
    if limit and size > limit:
        text = "5.3.4 The message (%d bytes) is larger than %s accepts (%d bytes)" % (size, client.what, limit)
        return [[a, 552, text] for a in rcpts]
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
    mail = replies[0]
    if mail[0] >= 400:
        await _rset(client)
        return [[a, mail[0], " ".join(mail[1])] for a in rcpts]
    results = []
    for i, a in enumerate(rcpts):
        code, lines = replies[1 + i] if 1 + i < len(replies) else (503, ["not tried"])
        results.append([a, code, " ".join(lines)])
    data = replies[1 + len(rcpts)] if len(replies) > 1 + len(rcpts) else None
    accepted = [r for r in results if r[1] < 300]
    if data is None or data[0] != 354:
        await _rset(client)
        code, text = (data[0], " ".join(data[1])) if data else (503, "DATA not sent")
        for r in accepted:
            r[1], r[2] = code, text
        return results
    if not accepted:
        # The server said 354 although every RCPT failed: end the empty
        # transaction cleanly (RFC 2920 3.1).
        await client.send(b".\r\n")
        await client.reply(client.data_end_timeout, "reply to the final dot")
        return results
    await _body(client, body)
    code, lines = await client.reply(client.data_end_timeout, "reply to the final dot")
    for r in accepted:
        r[1], r[2] = code, " ".join(lines)
    return results


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
