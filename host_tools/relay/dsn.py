"""Delivery status notifications shaped after RFC 3464 (multipart/report)."""
import email.utils
import time

from host_tools.relay.client import canonical


def _headers_of(message):
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


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
    return canonical("\r\n".join(parts).encode() + b"\r\n" + _headers_of(message) + tail.encode())
