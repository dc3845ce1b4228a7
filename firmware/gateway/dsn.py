# Delivery status notifications (RFC 3464): the bounce a sender gets when
# the box gives up on a message. multipart/report with a sentence for the
# person, the machine-readable delivery-status part, and the headers of the
# original message (never its body: the report stays small).
from gateway.compat import const
from gateway.log import rfc5322_date

_CHUNK = const(1024)
MAX_HEADERS = 16384  # bytes of the original's header copied into the report


def status_of(code, text):
    """The RFC 3463 status for a failure: the enhanced code the server gave,
    or one derived from its basic code."""
    word = text.split(" ", 1)[0] if text else ""
    parts = word.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and word[0] in "45":
        return word
    return "%d.0.0" % (code // 100 if code >= 400 else 5)


def write(draft, hostname, env, failed, now, body=None, remote=None):
    """Writes the report for `env` into `draft` (a spool Draft).
    failed: [(address, code, text)]; body: the original's spool Body (its
    header is quoted), or None."""
    boundary = "%s.%d/%s" % (env.id, now, hostname)

    def w(text):
        draft.write(text.encode() if isinstance(text, str) else text)

    w(("From: Mail Delivery System <MAILER-DAEMON@%s>\r\n"
       "To: <%s>\r\n"
       "Subject: Undelivered Mail Returned to Sender\r\n"
       "Date: %s\r\n"
       "Message-ID: <dsn.%s.%d@%s>\r\n"
       "Auto-Submitted: auto-replied\r\n"
       "MIME-Version: 1.0\r\n"
       "Content-Type: multipart/report; report-type=delivery-status;\r\n"
       "\tboundary=\"%s\"\r\n"
       "\r\n"
       "This is a MIME-encapsulated message.\r\n"
       "\r\n--%s\r\n"
       "Content-Type: text/plain; charset=us-ascii\r\n"
       "\r\n"
       "This is the mail gateway %s. Your message could not be delivered\r\n"
       "to the recipients below. The reasons are given with each address.\r\n"
       "\r\n") % (hostname, env.mail_from, rfc5322_date(now), env.id, now, hostname, boundary, boundary, hostname))
    failed = [(addr, code, _ascii(text)) for addr, code, text in failed]
    for addr, code, text in failed:
        w("  <%s>: %d %s\r\n" % (addr, code, text))
    w(("\r\n--%s\r\n"
       "Content-Type: message/delivery-status\r\n"
       "\r\n"
       "Reporting-MTA: dns; %s\r\n"
       "Arrival-Date: %s\r\n") % (boundary, hostname, rfc5322_date(env.received)))
    for addr, code, text in failed:
        w("\r\nFinal-Recipient: rfc822; %s\r\nAction: failed\r\nStatus: %s\r\n" % (addr, status_of(code, text)))
        if remote:
            w("Remote-MTA: dns; %s\r\n" % remote)
        if code:
            w("Diagnostic-Code: smtp; %d %s\r\n" % (code, text))
    if body is not None:
        w("\r\n--%s\r\nContent-Type: text/rfc822-headers\r\n\r\n" % boundary)
        _copy_header(body, w)
    w("\r\n--%s--\r\n" % boundary)


def _ascii(text):
    """A server's reply text fit for a header line: a bare CR in it (the
    reply reader splits on LF only) or any other control becomes "?"."""
    return bytes(c if 32 <= c < 127 else 63 for c in text.encode()).decode()


def _copy_header(body, w):
    """The original's header, up to the blank line or MAX_HEADERS bytes."""
    buf = bytearray(_CHUNK)
    copied = 0
    held = b""  # the last bytes read, not yet written: the blank line may straddle reads
    while copied < MAX_HEADERS:
        n = body.readinto(buf)
        if not n:
            break
        data = held + bytes(memoryview(buf)[:n])
        j = data.find(b"\r\n\r\n")
        if j >= 0:
            w(data[: j + 2])
            return
        w(data[:-3])
        held = data[-3:]
        copied += n
    w(held if held.endswith(b"\r\n") else held + b"\r\n")
