# The SMTP receiver (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
# ENHANCEDSTATUSCODES and AUTH): one session engine for both listeners, the
# provider's delivery after ATRN and the office LAN. It knows nothing about
# users or mailboxes: every decision is a Handler hook (aiosmtpd style), and
# the message goes to whatever Draft the handler's begin() returns.
import asyncio
import random
import time

from gateway import log, sasl, wire
from gateway.compat import ticks_ms
from gateway.smtp import data

_UNIMPLEMENTED = ("EXPN", "TURN", "ETRN", "ATRN", "BDAT", "STARTTLS", "SEND", "SOML", "SAML")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_STORAGE = (452, "4.3.1 Insufficient system storage, try again later")


class Handler:
    """Policy hooks. The defaults refuse every recipient; subclasses decide."""

    hostname = "gateway"
    max_size = 10240000
    spool = None  # a gateway.spool.Spool, if the handler writes to one

    def connect(self, session):
        return None

    def ehlo_keywords(self, session):
        return []

    def auth_password(self, session, user):
        return None

    def mail(self, session, address, params):
        return None

    def room(self, session, size):
        """Checked at MAIL: is there space for a message of `size` bytes
        (0 = not declared)? A refusal is temporary."""
        if self.spool is not None and not self.spool.room(size):
            return _STORAGE
        return None

    def rcpt(self, session, address):
        return 550, "5.7.1 No mail accepted for this recipient"

    def begin(self, session, mail_from, rcpts):
        return self.spool.begin(mail_from, rcpts)

    def delivered(self, session, id):
        pass


class _Closed(Exception):
    """The session ends: peer gone, timeout, QUIT or the error cap."""


class _Cancelled(Exception):
    """The client sent "*" to abandon an AUTH exchange."""


def peer_address(peer):
    """("ip", port) from what asyncio reports: a tuple on CPython and the
    ESP32, a raw sockaddr_in on the unix port."""
    if isinstance(peer, (bytes, bytearray)) and len(peer) >= 8 and peer[0] == 2:
        return "%d.%d.%d.%d" % (peer[4], peer[5], peer[6], peer[7]), peer[2] << 8 | peer[3]
    return peer


def _ip(peer):
    return peer[0] if isinstance(peer, (tuple, list)) else str(peer or "unknown")


def _address_ok(address):
    """A path without spaces, controls, brackets or 8-bit bytes (no SMTPUTF8)."""
    if len(address) > 256:
        return False
    for c in address:
        if c <= " " or c > "~" or c in "<>":
            return False
    return True


def _parse_path(arg, prefix):
    """(address, {PARAM: value}) from "FROM:<a> K=V ...", or None."""
    n = len(prefix)
    if arg[:n].upper() != prefix:
        return None
    rest = arg[n:].lstrip(" ")
    if rest[:1] == "<":
        end = rest.find(">")
        if end < 0:
            return None
        address, rest = rest[1:end], rest[end + 1 :]
        if rest and rest[0] != " ":
            return None
    else:
        address, _, rest = rest.partition(" ")
        if not address:
            return None
    if not _address_ok(address):
        return None
    params = {}
    for p in rest.split():
        k, eq, v = p.partition("=")
        if not k or not _alnum(k):
            return None
        params[k.upper()] = v if eq else None
    return address, params


def _alnum(k):
    for c in k:
        if not (c.isalpha() or c.isdigit() or c == "-"):
            return False
    return True


def _date(t):
    """RFC 5322 date in UTC; the box's clock is UTC once NTP has set it."""
    y, mo, d, h, mi, s, wd = time.gmtime(t)[:7]
    return "%s, %d %s %d %02d:%02d:%02d +0000" % (_DAYS[wd], d, _MONTHS[mo - 1], y, h, mi, s)


class SMTPSession:
    command_limit = 512  # octets including CRLF (RFC 5321 4.5.3.1.4)
    max_recipients = 100  # RFC 5321 4.5.3.1.8's minimum
    max_errors = 20  # bad or unknown commands before 421 (Postfix's hard limit)
    command_timeout = 300  # s to wait for one command (RFC 5321 4.5.3.2)
    data_timeout = 600  # s for the whole DATA phase
    buffer_size = 4096  # the one input buffer; more than a text line

    def __init__(self, reader, writer, handler, peer=None):
        self.reader = data.DataReader(reader, self.buffer_size)
        self.writer = writer
        self.handler = handler
        self.peer = peer
        self.helo = None
        self.esmtp = False
        self.user = None
        self.errors = 0
        self.mechanisms = ()
        self._out = []
        self._open = True
        self._reset()

    def _reset(self):
        self.mail_from = None
        self.rcpts = []
        self.size = 0

    # --- output ----------------------------------------------------------------
    def reply(self, code, text):
        self._out.append(wire.format_reply(code, text))

    def error(self, code, text):
        """A reply to a bad command; too many of them end the session."""
        self.reply(code, text)
        self.errors += 1
        if self.errors >= self.max_errors:
            self.reply(421, "4.7.0 Too many errors, closing connection")
            self._open = False

    async def flush(self):
        if self._out:
            out = b"".join(self._out)
            self._out = []
            self.writer.write(out)
            await self.writer.drain()

    # --- input -----------------------------------------------------------------
    async def _line(self):
        """The next line without CRLF. Replies go out first unless another
        complete command is already waiting (RFC 2920). None = too long."""
        r = self.reader
        if not r.has_line():
            await self.flush()
        try:
            line = await asyncio.wait_for(r.readline(), self.command_timeout)
        except asyncio.TimeoutError:
            self.reply(421, "4.4.2 %s Timeout, closing connection" % self.handler.hostname)
            raise _Closed()
        except wire.LineTooLong:
            return None
        if not line:
            raise _Closed()
        if len(line) > self.command_limit:
            return None
        return bytes(line).rstrip(b"\r\n")

    # --- the session -------------------------------------------------------------
    async def run(self, greet=True):
        try:
            refusal = self.handler.connect(self)
            if refusal:
                self.reply(*refusal)
                return
            if greet:
                self.reply(220, "%s ESMTP ready" % self.handler.hostname)
            while self._open:
                line = await self._line()
                if line is None:
                    self.error(500, "5.5.2 Line too long")
                    continue
                await self._command(line)
        except (_Closed, OSError, EOFError):
            pass
        finally:
            try:
                await self.flush()
            except OSError:
                pass
            try:
                self.writer.close()
                await self.writer.wait_closed()
            except OSError:
                pass

    async def _command(self, line):
        try:
            text = line.decode()
        except UnicodeError:
            self.error(500, "5.5.2 Syntax error: 8-bit bytes in a command")
            return
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        method = getattr(self, "smtp_" + verb, None) if verb.isalpha() else None
        if method is None:
            if verb in _UNIMPLEMENTED:
                self.error(502, "5.5.1 Command not implemented")
            else:
                self.error(500, "5.5.1 Command unrecognized")
            return
        try:
            await method(arg.strip())
        except (_Closed, OSError, EOFError):
            raise
        except Exception as e:  # noqa: BLE001 - a hook failed: answer, log, carry on
            log.error("smtp: %s failed: %r" % (verb, e))
            self.reply(451, "4.3.0 Local error in processing")

    # --- verbs -------------------------------------------------------------------
    async def smtp_EHLO(self, arg):
        if not arg:
            self.error(501, "5.5.4 Syntax: EHLO hostname")
            return
        self._reset()
        self.helo = arg
        self.esmtp = True
        h = self.handler
        lines = ["%s Hello %s" % (h.hostname, arg), "PIPELINING", "SIZE %d" % h.max_size, "8BITMIME", "ENHANCEDSTATUSCODES"]
        self.mechanisms = ()
        for kw in h.ehlo_keywords(self):
            lines.append(kw)
            if kw[:5].upper() == "AUTH ":
                self.mechanisms = kw[5:].upper().split()
        self.reply(250, lines)

    async def smtp_HELO(self, arg):
        if not arg:
            self.error(501, "5.5.4 Syntax: HELO hostname")
            return
        self._reset()
        self.helo = arg
        self.esmtp = False
        self.reply(250, self.handler.hostname)

    async def smtp_MAIL(self, arg):
        if not self.helo:
            self.error(503, "5.5.1 Error: send HELO/EHLO first")
            return
        if self.mail_from is not None:
            self.error(503, "5.5.1 Error: nested MAIL command")
            return
        parsed = _parse_path(arg, "FROM:")
        if parsed is None:
            self.error(501, "5.5.4 Syntax: MAIL FROM:<address> [parameters]")
            return
        address, params = parsed
        size = 0
        for k in params:
            v = params[k]
            if not self.esmtp:
                self.error(555, "5.5.4 Parameters need EHLO")
                return
            if k == "SIZE" and v and v.isdigit():
                size = int(v)
            elif k == "BODY" and v and v.upper() in ("7BIT", "8BITMIME"):
                pass
            elif k == "AUTH" and v:
                pass  # RFC 4954 5: we do not relay the submitter's identity
            else:
                self.error(555, "5.5.4 Unsupported parameter %s" % k)
                return
        h = self.handler
        if size > h.max_size:
            self.reply(552, "5.3.4 Message size exceeds fixed maximum message size")
            return
        refusal = h.room(self, size) or h.mail(self, address, params)
        if refusal:
            self.reply(*refusal)
            return
        self.mail_from = address
        self.size = size
        self.reply(250, "2.1.0 OK")

    async def smtp_RCPT(self, arg):
        if self.mail_from is None:
            self.error(503, "5.5.1 Error: need MAIL command")
            return
        parsed = _parse_path(arg, "TO:")
        if parsed is None:
            self.error(501, "5.5.4 Syntax: RCPT TO:<address>")
            return
        address, params = parsed
        if params:
            self.error(555, "5.5.4 Unsupported parameter")
            return
        if "@" not in address and address.lower() != "postmaster":
            self.reply(501, "5.1.3 Bad recipient address syntax")
            return
        if len(self.rcpts) >= self.max_recipients:
            self.reply(452, "4.5.3 Too many recipients")
            return
        queue = self.handler.rcpt(self, address)
        if not isinstance(queue, str):
            self.reply(*queue)
            return
        if (address, queue) not in self.rcpts:
            self.rcpts.append((address, queue))
        self.reply(250, "2.1.5 OK")

    async def smtp_DATA(self, arg):
        if arg:
            self.error(501, "5.5.4 Syntax: DATA")
            return
        if self.mail_from is None:
            self.error(503, "5.5.1 Error: need MAIL command")
            return
        if not self.rcpts:
            self.error(554, "5.5.1 Error: no valid recipients")
            return
        from gateway.spool import SpoolFull

        h = self.handler
        try:
            draft = h.begin(self, self.mail_from, self.rcpts)
        except SpoolFull:
            self.reply(*_STORAGE)
            self._reset()
            return
        self.reply(354, "End data with <CR><LF>.<CR><LF>")
        await self.flush()
        try:
            status, e = await self._receive(draft)
        except BaseException:
            draft.abort()
            raise
        if status == data.OK:
            try:
                id = draft.commit()
            except Exception as err:  # noqa: BLE001 - nothing was promised yet
                log.error("smtp: commit failed: %r" % (err,))
                draft.abort()
                status, e = data.SINK, err
        else:
            draft.abort()
        self._reset()
        if status == data.OK:
            self.reply(250, "2.0.0 OK queued as %s" % id)
            await self.flush()
            h.delivered(self, id)
        elif status == data.EOF:
            raise _Closed()
        elif status == data.TOO_BIG:
            self.reply(552, "5.3.4 Message too big for system")
        elif status == data.BARE:
            self.reply(550, "5.6.0 Bare CR or LF in message (RFC 5321 2.3.8), not accepted")
        elif status == data.LONG:
            self.reply(550, "5.6.0 Line longer than 1000 bytes (RFC 5321 4.5.3.1.6), not accepted")
        elif isinstance(e, SpoolFull):
            self.reply(*_STORAGE)
        else:
            log.error("smtp: writing the message failed: %r" % (e,))
            self.reply(451, "4.3.0 Local error writing the message, try again later")

    async def _receive(self, draft):
        """(outcome, sink error) of reading the message into the draft."""
        sink = draft.write
        try:
            draft.write(self._received().encode())
        except Exception as e:  # noqa: BLE001 - reported after the data is read
            self.reader.sink_error = e
            sink = None
        try:
            status, _ = await asyncio.wait_for(self.reader.read_data(sink, self.handler.max_size), self.data_timeout)
        except asyncio.TimeoutError:
            self.reply(421, "4.4.2 %s Timeout during DATA, closing connection" % self.handler.hostname)
            raise _Closed()
        return status, self.reader.sink_error

    def _received(self):
        with_ = ("ESMTPA" if self.user else "ESMTP") if self.esmtp else "SMTP"
        return "Received: from %s (%s)\r\n\tby %s with %s; %s\r\n" % (
            self.helo, _ip(self.peer), self.handler.hostname, with_, _date(time.time()))

    async def smtp_RSET(self, arg):
        self._reset()
        self.reply(250, "2.0.0 OK")

    async def smtp_NOOP(self, arg):
        self.reply(250, "2.0.0 OK")

    async def smtp_QUIT(self, arg):
        self.reply(221, "2.0.0 Bye")
        self._open = False

    async def smtp_VRFY(self, arg):
        if not arg:
            self.error(501, "5.5.4 Syntax: VRFY address")
            return
        self.reply(252, "2.5.0 Cannot VRFY user, but will accept message and attempt delivery")

    async def smtp_HELP(self, arg):
        verbs = "EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"
        self.reply(214, "2.0.0 Commands: " + verbs + (" AUTH" if self.mechanisms else ""))

    async def smtp_AUTH(self, arg):
        if not self.mechanisms:
            self.error(503, "5.5.1 AUTH not available")
            return
        if self.user:
            self.error(503, "5.5.1 Already authenticated")
            return
        if self.mail_from is not None:
            self.error(503, "5.5.1 AUTH not allowed during a mail transaction")
            return
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        if mech not in self.mechanisms or mech not in ("PLAIN", "LOGIN", "CRAM-MD5"):
            self.error(504, "5.5.4 Unrecognized authentication type")
            return
        initial = initial.strip()
        try:
            user = await getattr(self, "_auth_" + mech.replace("-", "_"))(initial)
        except sasl.SaslError:
            self.error(501, "5.5.2 Cannot decode response")
            return
        except _Cancelled:
            self.error(501, "5.0.0 Authentication cancelled")
            return
        if user is None:
            self.error(535, "5.7.8 Authentication credentials invalid")
            return
        self.user = user
        self.reply(235, "2.7.0 Authentication successful")

    async def _challenge(self, text):
        """334 and the client's base64 answer (as bytes)."""
        self.reply(334, text)
        line = await self._line()
        if line is None:
            raise sasl.SaslError("response too long")
        if line == b"*":
            raise _Cancelled()
        return line

    def _check(self, user, password):
        secret = self.handler.auth_password(self, user)
        return user if secret is not None and sasl.equal(secret, password) else None

    async def _auth_PLAIN(self, initial):
        resp = initial.encode() if initial else await self._challenge("")
        if resp == b"=":
            raise sasl.SaslError("empty")
        user, password = sasl.plain_parse(resp)
        return self._check(user, password)

    async def _auth_LOGIN(self, initial):
        user = sasl.b64decode(initial.encode() if initial else await self._challenge("VXNlcm5hbWU6"))
        password = sasl.b64decode(await self._challenge("UGFzc3dvcmQ6"))
        try:
            return self._check(user.decode(), password.decode())
        except UnicodeError:
            raise sasl.SaslError("not UTF-8")

    async def _auth_CRAM_MD5(self, initial):
        if initial:
            raise sasl.SaslError("CRAM-MD5 takes no initial response")
        nonce = "%d.%d" % (random.getrandbits(30), ticks_ms())
        challenge = sasl.cram_md5_challenge(self.handler.hostname, nonce)
        user, digest = sasl.cram_md5_parse(await self._challenge(challenge.decode()))
        secret = self.handler.auth_password(self, user)
        if secret is None or not sasl.cram_md5_check(secret, challenge, digest):
            return None
        return user


async def serve(handler_factory, host, port, max_sessions=8, with_peer=False):
    """An asyncio server: each connection gets SMTPSession(handler_factory())
    (handler_factory(peer) with with_peer=True); beyond max_sessions at once
    a connection gets 421 and is closed."""
    active = [0]

    async def client(reader, writer):
        peer = peer_address(writer.get_extra_info("peername"))
        if active[0] >= max_sessions:
            try:
                writer.write(b"421 4.3.2 Too many connections, try later\r\n")
                await writer.drain()
                writer.close()
                await writer.wait_closed()
            except OSError:
                pass
            return
        active[0] += 1
        try:
            handler = handler_factory(peer) if with_peer else handler_factory()
            await SMTPSession(reader, writer, handler, peer).run()
        except Exception as e:  # noqa: BLE001 - one broken session must not stop the server
            log.error("smtp: session from %s ended: %r" % (_ip(peer), e))
        finally:
            active[0] -= 1

    return await asyncio.start_server(client, host, port)
