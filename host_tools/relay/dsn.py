"""Delivery status notifications shaped after RFC 3464 (multipart/report).
The original comes back as its header fields only (text/rfc822-headers,
RFC 6522), never its body: a bounce to a forged sender must not carry the
spammer's text on to a victim."""
import email.utils
import re
import time

from host_tools.relay.client import canonical

MAX_HEADERS = 16384     # bytes of the original's header fields quoted in a DSN
_FIELD = re.compile(rb"[!-9;-~]+:|[ \t]")     # a field name and its colon, or a folded line


def headers_of(message):
    """The original's header fields in whole lines: up to the blank line, or
    to the first line that is not a header field (a message without a blank
    line must not pass its text off as headers), at most MAX_HEADERS bytes."""
    end = 0
    while True:
        nl = message.find(b"\r\n", end, end + MAX_HEADERS + 2)
        if nl < 0 or nl + 2 > MAX_HEADERS or not _FIELD.match(message, end, nl) or (end == 0 and message[:1] in b" \t"):
            return message[:end]
        end = nl + 2


def build(hostname, env, failures, message, why):
    """The DSN for `env` (sender, arrival) whose recipients in `failures`
    (address -> (status, diagnostic)) could not be delivered; `why` is the
    human sentence. Returns canonical message bytes, From MAILER-DAEMON."""
    boundary = f"=_dsn_{env.id}_{int(time.time())}"
    now = email.utils.formatdate(localtime=False)
    human = [
        f"This is the mail relay at {hostname}.",
        "",
        f"Your message could not be delivered to {len(failures)} recipient(s): {why}.",
        "",
    ] + [f"  <{rcpt}>: {diag}" for rcpt, (status, diag) in failures.items()]
    fields = [
        f"Reporting-MTA: dns; {hostname}",
        f"X-Relay-Queue-ID: {env.id}",
        f"Arrival-Date: {email.utils.formatdate(env.received, localtime=False)}",
    ]
    for rcpt, (status, diag) in failures.items():
        fields += [
            "",
            f"Final-Recipient: rfc822; {rcpt}",
            "Action: failed",
            f"Status: {status}",
            f"Diagnostic-Code: smtp; {diag}",
            f"Last-Attempt-Date: {now}",
        ]
    parts = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{env.mail_from}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {now}",
        f"Message-ID: <{env.id}.dsn.{int(time.time())}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        *fields,
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    tail = f"\r\n--{boundary}--\r\n"
    return canonical("\r\n".join(parts).encode() + b"\r\n" + headers_of(message) + tail.encode())
