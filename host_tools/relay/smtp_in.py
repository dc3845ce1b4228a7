"""The two aiosmtpd listeners: inbound SMTP for the held domains, and
submission for the boxes' outgoing mail (AUTH required)."""
import asyncio
import email.utils
import re

from aiosmtpd.smtp import SMTP, AuthResult, syntax

from host_tools.relay.config import domain_of


_CONTROL = re.compile(r"[^\x21-\x7e]")
_END = b"\r\n.\r\n"      # the end of the message text: a line that is only "."
# A path as nearly every MTA sends it: <dot-atom@dot-atom>, then blanks, then
# the parameters. aiosmtpd reads every path with the email package's full
# RFC 5322 parser, a twentieth of a millisecond each, two per message.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(rf"[ \t]*<({_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*)>[ \t]*([^ \t(].*)?", re.S)


def _sender(address):
    return "" if address in ("<>", "") else address


class RelaySMTP(SMTP):
    """aiosmtpd's server plus the shared failed-login throttle: a blocked IP
    gets 421 on AUTH, an AUTH counts as a try while it runs, and every 535
    is sent late and counted."""

    def __init__(self, handler, relay, **kw):
        super().__init__(handler, **kw)
        self.throttle = relay.throttle
        self._held = []         # replies not sent yet (push)

    def _getaddr(self, arg):
        """aiosmtpd's (address, rest of the line), without its parser for a
        plain path: the same answer (tests/host/test_relay_data.py)."""
        m = _PLAIN_PATH.fullmatch(arg or "")
        if not m:
            return super()._getaddr(arg)
        addr = m.group(1)
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, m.group(2) or ""

    async def smtp_AUTH(self, arg):
        ip = self.session.peer[0]
        if not self.throttle.begin(ip):
            await self.push("421 4.7.0 too many failed or unfinished logins from your address, try later")
            return
        try:
            await super().smtp_AUTH(arg)
        finally:
            self.throttle.end(ip)

    @syntax("DATA")
    async def smtp_DATA(self, arg):
        """aiosmtpd's DATA, reading the text in chunks up to the end mark
        instead of one line per await: the relay's intake spent more time in
        that loop than in anything else of its own."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            text = await MessageText(self._reader, self.data_size_limit, self.line_length_limit).read()
        except (asyncio.CancelledError, asyncio.IncompleteReadError):
            self._writer.close()        # the line is gone mid-message: nothing was taken
            raise
        if text.problem:
            self._set_post_data_state()
            await self.push(text.problem)
            return
        self.envelope.content = self.envelope.original_content = text.data
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    # Replies after which the client waits for this side before it sends
    # more (TLS, AUTH's challenge, the text after DATA, the end): never held.
    TURNING = (b"220", b"221", b"235", b"334", b"354", b"421")

    async def push(self, status):
        """Send a reply. While the client's next commands are already here
        (pipelined), replies are held and sent together with the reply to
        the last of them (RFC 2920 §3.2 asks a server that): MAIL, RCPT and
        DATA from Postfix get one write back, not three."""
        if isinstance(status, str):        # aiosmtpd pushes bytes too (AUTH's challenges)
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        if status.startswith(b"535"):
            self.throttle.failed(self.session.peer[0])
            await asyncio.sleep(self.throttle.delay)
        self._held.append(status + b"\r\n")
        if self._reader._buffer and not status.startswith(self.TURNING):
            return
        self._writer.write(b"".join(self._held))
        self._held.clear()
        await self._writer.drain()
        if status.startswith(b"421"):
            self.transport.close()      # 421 means this side is closing (RFC 5321 §3.8)


class MessageText:
    """The text after DATA up to the line ".", dot-unstuffed (RFC 5321
    §4.5.2). A message over the size limit or with a line over the line
    limit is read to its end all the same and dropped, and .problem is the
    reply (worded as aiosmtpd's). Past the size limit nothing more is kept.

    The reader is searched for CRLF "." CRLF, so a chunk costs one await
    however many lines it holds. That mark needs the CRLF before the dot,
    which the first line has not: lines at the very start that begin with
    "." or CR (the end itself, dot-stuffed or empty lines) are read one by
    one, and the search starts inside the first line that begins otherwise."""

    def __init__(self, reader, size_limit, line_limit):
        self.reader = reader
        self.size_limit = size_limit
        self.line_limit = line_limit        # octets, CRLF included
        self.chunks = []
        self.size = 0
        self.problem = None

    async def read(self):
        while True:
            first = await self.reader.readexactly(1)
            if first not in b".\r":
                break
            try:
                line = first + await self.reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as e:
                first += await self.reader.readexactly(e.consumed)
                break                       # inside an overlong line: the search below ends it
            if line == b".\r\n":
                return self._done()
            self._keep(line)
        self._keep(first)
        while True:
            try:
                chunk = await self.reader.readuntil(_END)
            except asyncio.LimitOverrunError as e:
                self._keep(await self.reader.readexactly(e.consumed))
                continue
            self._keep(chunk[:-3])          # up to the CRLF that ends the last line
            return self._done()

    def _keep(self, chunk):
        self.size += len(chunk)
        if self.size_limit and self.size > self.size_limit:
            self.problem = "552 Error: Too much mail data"
            self.chunks = []
        if not self.problem:
            self.chunks.append(chunk)

    def _done(self):
        data = b"".join(self.chunks)
        self.chunks = []
        if not self.problem and max(map(len, data.split(b"\r\n"))) + 2 > self.line_limit:
            self.problem = "500 Line too long (see RFC5321 4.5.3.1.6)"
        self.data = b"" if self.problem else (data[1:] if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n")
        return self


class BaseHandler:
    def __init__(self, relay):
        self.relay = relay

    def received(self, server, session, extra=""):
        proto = "ESMTPS" if server._tls_protocol else "ESMTP"
        if session.authenticated:
            proto += "A"
        # The EHLO name is the client's; a stray CR in it must not start a header of its own.
        helo = _CONTROL.sub("?", session.host_name or "unknown")[:255]
        return (
            f"Received: from {helo} ([{session.peer[0]}]){extra}\r\n"
            f"\tby {self.relay.cfg.hostname} (odmrgw relay) with {proto};\r\n"
            f"\t{email.utils.formatdate(localtime=False)}\r\n"
        ).encode()

    def too_many(self, envelope):
        return len(envelope.rcpt_tos) >= self.relay.cfg.limits["max_recipients"]


class InboundHandler(BaseHandler):
    """Mail for the held domains only: never an open relay. With recipient
    lists, unknown addresses are refused at RCPT, so the sending MTA bounces
    and the relay never sends backscatter; a session that keeps guessing
    addresses is closed."""

    MAX_REFUSED = 20    # refused recipients per connection before 421

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        # PIPELINING (RFC 2920): aiosmtpd answers pipelined commands in order
        # but does not say so; Postfix then sends MAIL, RCPT and DATA in one
        # write, half the round trips per message.
        responses = [r for r in responses if not r.startswith("250-AUTH")]
        return responses[:-1] + ["250-PIPELINING", responses[-1]]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        envelope.mail_from = _sender(address)
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if domain_of(address) not in self.relay.held:
            return self.refuse(session, f"550 5.7.1 relaying denied: {domain_of(address) or address} is not held here")
        if not self.relay.cfg.knows(address):
            return self.refuse(session, f"550 5.1.1 <{address}>: no such recipient here")
        if self.too_many(envelope):
            return "452 4.5.3 too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    def refuse(self, session, reply):
        session.refused = getattr(session, "refused", 0) + 1
        return reply if session.refused < self.MAX_REFUSED else "421 4.7.0 too many refused recipients, closing"

    async def handle_DATA(self, server, session, envelope):
        data = self.received(server, session) + envelope.original_content
        try:
            id = await self.relay.accept(envelope.mail_from, envelope.rcpt_tos, data, f"smtp {session.peer[0]}")
        except OSError as e:
            return f"451 4.3.0 could not queue the message ({e.strerror}), try again later"
        return f"250 2.0.0 OK queued as {id}"


class SubmissionHandler(BaseHandler):
    """The boxes' outgoing mail: AUTH required, MAIL FROM only from the account's
    domains (or the null sender, for the box's own bounces)."""

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        account = self.relay.accounts.check_password(
            auth_data.login.decode("utf-8", "replace"), auth_data.password.decode("utf-8", "replace")
        )
        return AuthResult(success=bool(account), handled=False, auth_data=account)

    async def auth_CRAM__MD5(self, server, args):
        if len(args) > 1:
            await server.push("501 5.5.4 CRAM-MD5 takes no initial response")
            return AuthResult(success=False, handled=True)
        challenge = self.relay.accounts.challenge(self.relay.cfg.hostname)
        answer = await server.challenge_auth(challenge)
        if not isinstance(answer, bytes):
            return AuthResult(success=False, handled=True)
        account = self.relay.accounts.check_cram_md5(challenge, answer.decode("utf-8", "replace"))
        return AuthResult(success=bool(account), handled=False, auth_data=account)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        account = session.auth_data
        sender = _sender(address)
        if sender and domain_of(sender) not in account.domains:
            return f"553 5.7.1 <{sender}> is not an address of account {account.user}"
        envelope.mail_from = sender
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if "@" not in address:
            return "553 5.1.3 need a full address"
        if self.too_many(envelope):
            return "452 4.5.3 too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        user = session.auth_data.user
        data = self.received(server, session, f"\r\n\t(authenticated as {user})") + envelope.original_content
        try:
            id = await self.relay.accept_outgoing(envelope.mail_from, envelope.rcpt_tos, data, f"submission {user}")
        except OSError as e:
            return f"451 4.3.0 could not queue the message ({e.strerror}), try again later"
        return f"250 2.0.0 OK queued as {id}"


async def serve(relay, name, host, port, tls_context):
    lim = relay.cfg.limits
    common = dict(
        hostname=relay.cfg.hostname, ident="ESMTP odmrgw relay", data_size_limit=lim["max_size"],
        tls_context=tls_context, timeout=lim["timeout"], decode_data=False,
    )
    if name == "smtp":
        handler = InboundHandler(relay)
        kw = dict(common, auth_exclude_mechanism=["LOGIN", "PLAIN"])
    else:
        handler = SubmissionHandler(relay)
        kw = dict(common, auth_required=True, auth_require_tls=bool(tls_context), authenticator=handler.authenticate)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: RelaySMTP(handler, relay, **kw), host, port)
