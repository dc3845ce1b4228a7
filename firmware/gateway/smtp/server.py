# The SMTP receiver (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
# ENHANCEDSTATUSCODES and AUTH): one session engine for both listeners, the
# provider's delivery after ATRN and the office LAN. It knows nothing about
# users or mailboxes: every decision is a Handler hook (aiosmtpd style), and
# the message goes to whatever Draft the handler's begin() returns.
import asyncio

from gateway import log, wire
from gateway.compat import no_delay, peer_ip, ticks_add, ticks_diff, ticks_ms, write_view
from gateway.smtp import data

_STORAGE = (452, "4.3.1 Insufficient system storage, try again later")
# Replies to a message refused after its data was read, by data outcome.
_REFUSED = (
    None,
    (552, "5.3.4 Message too big for system"),
    (550, "5.6.0 Bare CR or LF in message (RFC 5321 2.3.8), not accepted"),
    (550, "5.6.0 Line over 1000 bytes (RFC 5321 4.5.3.1.6), not accepted"),
)


_VERBS = ("EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "HELP", "AUTH", "STARTTLS")
# Before AUTH only these renew a session's short idle limit: NOOP, HELP,
# RSET and friends must not hold a slot open for ever.
_PROGRESS = ("MAIL", "RCPT", "DATA", "AUTH", "STARTTLS")


class Handler:
    """Policy hooks. The defaults refuse every recipient; subclasses decide."""

    hostname = "gateway"
    max_size = 10240000
    spool = None  # a gateway.spool.Spool, if the handler writes to one
    login_timeout = None  # s a session that has not authenticated may idle; None: command_timeout
    tls = None  # an ssl server context: STARTTLS is offered (RFC 3207)

    def _nothing(self, session, *args):
        return None

    # connect(session): None or a refusal; ehlo_keywords(session): extra
    # EHLO lines (None = none); auth_password(session, user): the password
    # or None; logins(session): the failed-login record (gateway.guard) or
    # None; mail(session, address, params): None or a refusal (the
    # declared SIZE is session.size once MAIL is taken);
    # delivered(session, id, queues): after the 250 went out, with the
    # queues the committed message's recipients are in (a tuple, each
    # once). One shared default costs less heap than six functions.
    connect = ehlo_keywords = auth_password = logins = mail = delivered = _nothing

    def room(self, session, size):
        """Checked at MAIL: is there space for a message of `size` bytes
        (0 = not declared)? A refusal is temporary."""
        if self.spool is not None and not self.spool.room(size):
            return _STORAGE
        return None

    def rcpt(self, session, address):
        return 550, "5.7.1 No mail accepted for this recipient"

    def now(self):
        """Unix seconds for the Received line: the board's clock, which
        the spool keeps (the clock every record is stamped with)."""
        return self.spool.clock()

    def begin(self, session, mail_from, rcpts):
        return self.spool.begin(mail_from, rcpts)


class Recipients:
    """A transaction's (address, queue) pairs in a table made at its full
    size (SMTPSession.max_recipients) and kept from session to session
    (take_table): a list grown one by one took a 512-byte block at the
    65th RCPT, which a heap cut up by the day's sessions did not have."""

    def __init__(self, capacity):
        self.items = [None] * capacity
        self.n = 0

    def __len__(self):
        return self.n

    def __iter__(self):
        for i in range(self.n):
            yield self.items[i]

    def full(self, limit):
        return self.n >= min(limit, len(self.items))

    def add(self, address, queue):
        for i in range(self.n):
            if self.items[i] == (address, queue):
                return
        self.items[self.n] = (address, queue)
        self.n += 1

    def queues(self):
        """The queues the recipients are in, each once."""
        out = ()
        for i in range(self.n):
            q = self.items[i][1]
            if q not in out:
                out += (q,)
        return out

    def clear(self):
        for i in range(self.n):
            self.items[i] = None
        self.n = 0


class _Closed(Exception):
    """The session ends: peer gone, timeout, QUIT or the error cap."""


def _path(arg, prefix):
    """(address, {PARAM: value}) from "FROM:<a> K=V ..." or None. The path
    may not hold spaces, controls, brackets or 8-bit bytes (no SMTPUTF8)."""
    if arg[: len(prefix)].upper() != prefix:
        return None
    rest = arg[len(prefix) :].lstrip(" ")
    if rest[:1] == "<":
        end = rest.find(">")
        address, rest = rest[1:end], rest[end + 1 :]
        if end < 0 or rest[:1] not in ("", " "):
            return None
    else:
        address, _, rest = rest.partition(" ")
        if not address:
            return None
    if len(address) > 256:
        return None
    # Checked as bytes: iterating a str makes one-character strings, which
    # MicroPython interns as qstrs that are never freed.
    for c in address.encode():
        if c <= 32 or c > 126 or c == 60 or c == 62:
            return None
    params = {}
    for p in rest.split():
        k, eq, v = p.partition("=")
        params[k.upper()] = v if eq else None
    return address, params


class SMTPSession:
    command_limit = 512  # octets including CRLF (RFC 5321 4.5.3.1.4)
    max_recipients = 100  # RFC 5321 4.5.3.1.8's minimum
    max_errors = 20  # bad or unknown commands before 421 (Postfix's hard limit)
    command_timeout = 300  # s to wait for one command (RFC 5321 4.5.3.2)
    data_timeout = 600  # s for the whole DATA phase
    buffer_size = 4096  # the one input buffer; more than a text line
    max_pending_replies = 16  # replies held back while pipelined commands wait
    reply_buffer = 512  # they go out joined in this much, one buffer for all sessions

    def __init__(self, reader, writer, handler, peer=None, buf=None, rcpts=None):
        """rcpts: a Recipients table (take_table); the session gives it
        back to the pool when it ends."""
        self.reader = data.DataReader(reader, self.buffer_size, buf)
        self.rcpts = take_table() if rcpts is None else rcpts
        self.writer = writer
        self.handler = handler
        self.peer = peer
        self.helo = self.user = None
        self.esmtp = False
        self.secure = False  # inside TLS since STARTTLS
        self.errors = 0
        self.login_failures = 0
        self.mechanisms = ()
        self._out = []
        self._delivered = []  # (id, queues) whose 250 is not out yet: a pipelined MAIL may start the next one
        self._open = True
        self._reset()

    def _reset(self):
        self.mail_from = None
        self.rcpts.clear()
        self.size = 0  # SIZE= of this transaction's MAIL (0: not declared)

    def reply(self, code, text):
        self._out.append(wire.format_reply(code, text))

    def error(self, code, text):
        """A reply to a bad command; too many of them end the session."""
        self.reply(code, text)
        self.errors += 1
        if self.errors >= self.max_errors:
            self.hang_up(421, "4.7.0 Too many errors, closing connection")

    def hang_up(self, code, text):
        """The last reply: the session ends once it is out."""
        self.reply(code, text)
        self._open = False

    def _write_out(self):
        """The held-back replies in one write. A write each sent a TCP
        segment each, and Nagle's algorithm held the second until the
        client's delayed ACK (40 ms on Linux, 200 ms on Windows): 23
        pipelined messages a second instead of 1,200. They are joined in one
        buffer all sessions share, made once: a joined copy took a block a
        cut-up heap may not have (570 bytes for 16 replies)."""
        out = _join_buffer()
        room = len(out)
        n = 0
        for reply in self._out:
            k = len(reply)
            if n + k > room:
                if n:
                    write_view(self.writer, out[:n])
                    n = 0
                if k > room:
                    self.writer.write(reply)
                    continue
            out[n : n + k] = reply
            n += k
        if n:
            write_view(self.writer, out[:n])
        self._out.clear()

    async def flush(self):
        if self._out:
            self._write_out()
            await self.writer.drain()
        # Hand-offs wait until the 250 is out: the client must not wait for
        # local delivery, and it may send its next commands before that.
        while self._delivered:
            id, queues = self._delivered.pop(0)
            try:
                self.handler.delivered(self, id, queues)
            except Exception as e:  # noqa: BLE001 - the message is safe in the spool
                log.error("smtp: hand-off of %s failed: %r" % (id, e))

    def _expire_in(self, seconds):
        self._deadline = ticks_add(ticks_ms(), int(seconds * 1000))

    def _idle_limit(self):
        short = self.handler.login_timeout
        return short if short and not self.user else self.command_timeout

    async def _watch(self, task):
        """Cancels the session's task once its deadline has passed, looking
        every quarter of the shorter timeout, so a timeout fires up to a
        quarter late. One such task per session, where asyncio.wait_for
        would make two tasks and a closure per command."""
        step = min(self._idle_limit(), self.command_timeout, self.data_timeout) / 4
        while ticks_diff(self._deadline, ticks_ms()) > 0:
            await asyncio.sleep(step)
        self._expired = True
        task.cancel()

    async def read_line(self):
        """The next line without CRLF, None if too long. Replies go out first
        unless another whole command is already waiting (RFC 2920)."""
        r = self.reader
        if self._renew:
            self._expire_in(self._idle_limit())
        try:
            # A client that pipelines without reading its replies must not
            # make them pile up in the heap: past a few, they go out anyway.
            if not r.has_line() or len(self._out) >= self.max_pending_replies:
                await self.flush()
            line = await r.readline()
        except asyncio.CancelledError:
            if not self._expired:
                raise
            self.reply(421, "4.4.2 %s Timeout, closing connection" % self.handler.hostname)
            raise _Closed()
        except wire.LineTooLong:
            return None
        if not line:
            raise _Closed()
        return bytes(line).rstrip(b"\r\n") if len(line) <= self.command_limit else None

    async def run(self, greet=True):
        self._expired = False
        self._renew = True
        self._expire_in(self._idle_limit())
        watch = asyncio.create_task(self._watch(asyncio.current_task()))
        try:
            refusal = self.handler.connect(self)
            if refusal:
                self.reply(*refusal)
                return
            if greet:
                self.reply(220, "%s ESMTP ready" % self.handler.hostname)
            while self._open:
                await self._command(await self.read_line())
        except (_Closed, OSError, EOFError):
            pass
        except asyncio.CancelledError:
            if not self._expired:
                raise
        finally:
            watch.cancel()
            try:
                if self._expired:  # a peer that is not reading gets no more waiting
                    self._write_out()
                else:
                    await self.flush()
            except OSError:
                pass  # the peer is gone; the socket is closed all the same
            try:
                self.writer.close()
                await self.writer.wait_closed()
            except OSError:
                pass
            self._reset()
            _tables.append(self.rcpts)

    async def _command(self, line):
        try:
            verb, _, arg = line.decode().partition(" ")
        except (UnicodeError, AttributeError):
            self.error(500, "5.5.2 Line too long or not ASCII")
            return
        verb = verb.upper()
        self._renew = self.user is not None or verb in _PROGRESS
        # Only known verbs reach getattr: it interns its argument as a qstr,
        # so a stream of made-up verbs would fill the heap for good.
        method = getattr(self, "smtp_" + verb) if verb in _VERBS else None
        if method is None:
            if verb in ("EXPN", "TURN", "ETRN", "ATRN", "BDAT"):
                self.error(502, "5.5.1 Command not implemented")
            else:
                self.error(500, "5.5.1 Command unrecognized")
            return
        try:
            # Only DATA and AUTH wait for the peer; the other verbs are plain.
            pending = method(arg.strip())
            if pending:
                await pending
        except (_Closed, OSError, EOFError):
            raise
        except Exception as e:  # noqa: BLE001 - a hook failed: answer, log, carry on
            log.error("smtp: %s failed: %r" % (verb, e))
            self.reply(451, "4.3.0 Local error in processing")

    # --- the verbs ------------------------------------------------------------
    def smtp_EHLO(self, arg, esmtp=True):
        if not arg:
            self.error(501, "5.5.4 Syntax: EHLO hostname")
            return
        # The name goes into our Received: line and the reply: a bare CR
        # there forges header lines for every parser and MTA downstream.
        for c in arg.encode():
            if c < 32 or c > 126:
                self.error(501, "5.5.2 EHLO/HELO takes a host name in ASCII, without control characters")
                return
        self._reset()
        self.helo = arg
        self.esmtp = esmtp
        self.mechanisms = ()  # AUTH needs EHLO (RFC 4954)
        h = self.handler
        if not esmtp:
            self.reply(250, h.hostname)
            return
        lines = ["%s Hello %s" % (h.hostname, arg), "PIPELINING", "SIZE %d" % h.max_size, "8BITMIME", "ENHANCEDSTATUSCODES"]
        if h.tls and not self.secure:
            lines.append("STARTTLS")
        for kw in h.ehlo_keywords(self) or ():
            lines.append(kw)
            if kw[:5].upper() == "AUTH ":
                self.mechanisms = kw[5:].upper().split()
        self.reply(250, lines)

    def smtp_HELO(self, arg):
        self.smtp_EHLO(arg, False)

    def smtp_MAIL(self, arg):
        if not self.helo or self.mail_from is not None:
            self.error(503, "5.5.1 Error: send HELO/EHLO first" if not self.helo else "5.5.1 Error: nested MAIL command")
            return
        parsed = _path(arg, "FROM:")
        if parsed is None:
            self.error(501, "5.5.4 Syntax: MAIL FROM:<address> [parameters]")
            return
        address, params = parsed
        size = 0
        for k in params:
            v = params[k] or ""
            if k == "SIZE" and v.isdigit() and self.esmtp:
                size = int(v)
            elif not (k == "BODY" and v.upper() in ("7BIT", "8BITMIME") or k == "AUTH" and v) or not self.esmtp:
                self.error(555, "5.5.4 Unsupported parameter %s" % k)
                return
        h = self.handler
        refusal = size > h.max_size and (552, "5.3.4 Message size exceeds fixed maximum message size")
        refusal = refusal or h.room(self, size) or h.mail(self, address, params)
        if refusal:
            self.reply(*refusal)
            return
        self.mail_from = address
        self.size = size
        self.reply(250, "2.1.0 OK")

    def smtp_RCPT(self, arg):
        if self.mail_from is None:
            self.error(503, "5.5.1 Error: need MAIL command")
            return
        parsed = _path(arg, "TO:")
        if parsed is None or parsed[1]:
            self.error(501, "5.5.4 Syntax: RCPT TO:<address>, no parameters")
            return
        address = parsed[0]
        if "@" not in address and address.lower() != "postmaster":
            self.reply(501, "5.1.3 Bad recipient address syntax")
        elif self.rcpts.full(self.max_recipients):
            self.reply(452, "4.5.3 Too many recipients")
        else:
            queue = self.handler.rcpt(self, address)
            if not isinstance(queue, str):
                self.reply(*queue)
                return
            self.rcpts.add(address, queue)
            self.reply(250, "2.1.5 OK")

    def smtp_DATA(self, arg):
        if arg or not self.rcpts:
            if arg:
                self.error(501, "5.5.4 Syntax: DATA")
            elif self.mail_from is None:
                self.error(503, "5.5.1 Error: need MAIL command")
            else:
                self.error(554, "5.5.1 Error: no valid recipients")
            return None
        return self._data()

    async def _data(self):
        from gateway.spool import SpoolFull

        h = self.handler
        try:
            draft = h.begin(self, self.mail_from, self.rcpts)
        except SpoolFull:
            self._reset()
            self.reply(*_STORAGE)
            return
        queues = self.rcpts.queues()
        self._reset()
        self.reply(354, "End data with <CR><LF>.<CR><LF>")
        self._expire_in(self.data_timeout)
        r = self.reader
        sink = draft.write
        r.sink_error = None
        try:
            # The Received: line (RFC 5321 4.4), dated by the board's clock
            # (UTC once NTP has set it).
            draft.write(b"Received: from %s (%s)\r\n\tby %s with %s; %s\r\n" % (
                self.helo.encode(), (self.peer or "unknown").encode(),
                h.hostname.encode(), b"ESMTPA" if self.user else b"ESMTP" if self.esmtp else b"SMTP",
                log.rfc5322_date(h.now()).encode()))
        except Exception as e:  # noqa: BLE001 - reported once the data is read
            r.sink_error = e
            sink = None
        try:
            await self.flush()
            r.at = draft.tell() if sink else 0
            status, _ = await r.read_data(sink, h.max_size)
        except asyncio.CancelledError:
            draft.abort()
            if not self._expired:
                raise
            self.reply(421, "4.4.2 %s Timeout during DATA, closing connection" % h.hostname)
            raise _Closed()
        except Exception as e:  # noqa: BLE001 - where the message ends is lost with it
            # The rest of the message would be read as commands: a 451 here
            # was followed by a 500 for each of its lines.
            draft.abort()
            log.error("smtp: reading the message failed: %r" % (e,))
            self.reply(421, "4.3.0 %s Local error reading the message, closing connection" % h.hostname)
            raise _Closed()
        except BaseException:
            draft.abort()
            raise
        if status == data.OK:
            try:
                id = draft.commit()
            except Exception as e:  # noqa: BLE001 - the commit failed: nothing was promised
                r.sink_error = e
                status = data.SINK
        if status == data.OK:
            self.reply(250, "2.0.0 OK queued as %s" % id)
            self._delivered.append((id, queues))
            return
        draft.abort()
        if status == data.EOF:
            raise _Closed()
        if status != data.SINK:
            self.reply(*_REFUSED[status])
        elif isinstance(r.sink_error, SpoolFull):
            self.reply(*_STORAGE)
        else:
            log.error("smtp: writing the message failed: %r" % (r.sink_error,))
            self.reply(451, "4.3.0 Local error writing the message, try again later")

    def smtp_RSET(self, arg):
        self._reset()
        self.reply(250, "2.0.0 OK")

    def smtp_NOOP(self, arg):
        self.reply(250, "2.0.0 OK")

    def smtp_QUIT(self, arg):
        self.reply(221, "2.0.0 Bye")
        self._open = False

    def smtp_VRFY(self, arg):
        self.reply(252, "2.5.0 Cannot VRFY user, but will accept message and attempt delivery")

    def smtp_HELP(self, arg):
        self.reply(214, "2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP" + (" AUTH" if self.mechanisms else ""))

    def smtp_STARTTLS(self, arg):
        if not self.handler.tls or self.secure:
            self.error(502 if not self.secure else 503, "5.5.1 STARTTLS not available" + (" inside TLS" if self.secure else ""))
        elif arg:
            self.error(501, "5.5.4 Syntax: STARTTLS")
        elif self.mail_from is not None:
            self.error(503, "5.5.1 STARTTLS not inside a mail transaction")
        else:
            return self._starttls()
        return None

    async def _starttls(self):
        from gateway.compat import start_tls

        self.reply(220, "2.0.0 Ready to start TLS")
        await self.flush()
        # RFC 3207 4.2: nothing said before TLS counts after it; commands
        # pipelined behind STARTTLS were sent in clear and are dropped.
        r = self.reader
        r.start = r.end = 0
        try:
            await start_tls(r.stream, self.writer, self.handler.tls)
        except (OSError, ValueError) as e:
            log.warn("smtp: TLS handshake with %s failed: %r" % (self.peer, e))
            raise _Closed()
        self.secure = True
        self.helo = None
        self.esmtp = False
        self.mechanisms = ()
        self._reset()

    def smtp_AUTH(self, arg):
        from gateway.smtp import auth

        return auth.command(self, arg)


# Input buffers and recipient tables of finished sessions, kept for the
# next connection; the one buffer replies are joined in (a memoryview).
_spare = []
_tables = []
_joined = []


def _join_buffer():
    if not _joined:
        _joined.append(memoryview(bytearray(SMTPSession.reply_buffer)))
    return _joined[0]


def take_table():
    """A Recipients table: a finished session's, or a new one (MemoryError
    when the heap has no block for it)."""
    return _tables.pop() if _tables else Recipients(SMTPSession.max_recipients)


def reserve(count=1, made=(), tables=None):
    """Makes session buffers now, and recipient tables (one for each
    unless `tables` says). A box that calls this early, before the heap
    is cut up into small pieces, can always take a connection; one that
    made its buffers before even this module loaded lends them as `made`."""
    _spare.extend(made)
    _join_buffer()
    for _ in range(count - len(made)):
        _spare.append(bytearray(SMTPSession.buffer_size))
    for _ in range(count if tables is None else tables):
        _tables.append(Recipients(SMTPSession.max_recipients))


async def serve(handler_factory, host, port, max_sessions=8):
    """An asyncio server: each connection gets SMTPSession(handler_factory())
    with the client's address as its peer (compat.peer_ip); beyond max_sessions at once,
    beyond half of them from one address (gateway.guard), or when no
    memory is left for one more, a connection gets 421."""
    from gateway.guard import Slots

    slots = Slots(max_sessions)
    spare = _spare

    async def client(reader, writer):
        no_delay(writer)
        ip = peer_ip(writer.get_extra_info("peername"))
        buf = table = None
        refusal = slots.take(ip)
        if refusal is None:
            try:
                table = take_table()
                buf = spare.pop() if spare else bytearray(SMTPSession.buffer_size)
            except MemoryError:
                if table:
                    _tables.append(table)
                log.warn("smtp: no memory for another session")
                slots.give(ip)
                refusal = "Too many connections, try later"
        if buf is None:
            try:
                writer.write(b"421 4.3.2 %s\r\n" % refusal.encode())
                await writer.drain()
                writer.close()
                await writer.wait_closed()
            except OSError:
                pass
            return
        try:
            await SMTPSession(reader, writer, handler_factory(), ip, buf, table).run()
        except Exception as e:  # noqa: BLE001 - one broken session must not stop the server
            log.error("smtp: session from %s ended: %r" % (ip, e))
        finally:
            slots.give(ip)
            spare.append(buf)

    return await asyncio.start_server(client, host, port)
