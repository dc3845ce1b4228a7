# The SMTP client: the outbound flush to the smarthost, and the ODMR customer
# up to its ATRN (after which the roles reverse and the receiver takes over).
# Replies go through wire's bounded line reader, so multi-line replies and
# replies split across TCP reads parse the same way; message bodies stream
# from the spool through one fixed buffer, dot-stuffed on the way out.
import asyncio

from gateway import log, sasl, wire
from gateway.compat import const

_DOT = const(0x2E)
_LF = const(0x0A)


class SMTPError(Exception):
    """A failed step: .code (the server's, or one we chose for a local
    failure: 421 network, 554 TLS/config, 502 not offered) and .text, a
    sentence for the log and the console."""

    def __init__(self, code, text):
        super().__init__("%d %s" % (code, text))
        self.code = code
        self.text = text

    @property
    def temporary(self):
        return self.code < 500


class SMTPClient:
    """One SMTP conversation. Timeouts follow RFC 5321 4.5.3.2, except the
    connection set-up, which a box on a small line should not wait on."""

    line_size = 1024  # reply lines (RFC 5321 says 512; some servers say more)
    chunk_size = 1024  # message bytes per write (a bigger block may not exist in a fragmented heap)
    connect_timeout = 60
    tls_timeout = 60
    greeting_timeout = 300
    command_timeout = 300
    data_init_timeout = 120
    data_block_timeout = 180
    data_end_timeout = 600
    quit_timeout = 10

    def __init__(self, reader, writer, what="server"):
        self.reader = reader
        self.writer = writer
        self.lines = wire.LineReader(reader, self.line_size)
        self.what = what
        self.ext = {}
        self.tls = False
        self.buf = None  # the one body buffer, made at the first message

    # --- set-up --------------------------------------------------------------
    @classmethod
    async def open(cls, conf, default_port, hostname, what):
        """Connect, TLS as configured, greeting, EHLO, STARTTLS + EHLO, AUTH."""
        from gateway import tls

        host = conf.get("host")
        port = conf.get("port") or default_port
        mode = tls.mode(conf, what)
        ctx = tls.context(conf, what) if mode != "none" else None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), cls.connect_timeout)
        except Exception as e:  # noqa: BLE001 - OSError, gaierror or a timeout, by runtime
            raise SMTPError(421, "4.4.1 %s: cannot connect to %s:%d: %s" % (what, host, port, tls._reason(e) or "timeout"))
        client = cls(reader, writer, what)
        try:
            if mode == "implicit":
                await client._upgrade(ctx, tls.server_name(conf))
            await client.greeting()
            await client.ehlo(hostname)
            if mode == "starttls":
                await client.starttls(ctx, tls.server_name(conf))
                await client.ehlo(hostname)
            if conf.get("user"):
                await client.login(conf["user"], conf.get("secret") or "")
        except SMTPError as e:
            # Say goodbye when the server can still hear it.
            await (client.quit() if e.code != 421 else client.close())
            raise
        except BaseException:
            await client.close()
            raise
        return client

    async def _upgrade(self, ctx, name):
        from gateway import tls

        await tls.upgrade(self.reader, self.writer, ctx, name, self.tls_timeout, self.what)
        self.tls = True

    async def greeting(self):
        code, lines = await self.reply(self.greeting_timeout, "greeting")
        if code != 220:
            raise SMTPError(code, "%s refused the connection: %s" % (self.what, " ".join(lines)))

    async def ehlo(self, hostname):
        code, lines = await self.command("EHLO " + hostname)
        if code != 250:
            raise SMTPError(code, "%s refused EHLO: %s" % (self.what, " ".join(lines)))
        self.ext = {}
        for line in lines[1:]:
            keyword, _, params = line.partition(" ")
            self.ext[keyword.upper()] = params.strip()

    async def starttls(self, ctx, name):
        # tls = starttls is a promise: a server that does not offer it is an
        # error, never a reason to carry on in clear.
        if "STARTTLS" not in self.ext:
            raise SMTPError(
                554, "5.7.0 %s does not offer STARTTLS, and tls = starttls forbids going on in clear" % self.what
            )
        code, lines = await self.command("STARTTLS")
        if code != 220:
            raise SMTPError(code, "%s refused STARTTLS: %s" % (self.what, " ".join(lines)))
        if self.lines.pending():
            # Bytes sent before the handshake would be trusted as if they had
            # come through TLS (the STARTTLS injection attack).
            raise SMTPError(554, "5.7.0 %s sent data before the TLS handshake" % self.what)
        await self._upgrade(ctx, name)

    async def login(self, user, secret):
        """AUTH with the best mechanism on offer: CRAM-MD5 (the secret never
        crosses the line); PLAIN or LOGIN only inside TLS."""
        offered = self.ext.get("AUTH", "").upper().split()
        if "CRAM-MD5" in offered:
            code, lines = await self.command("AUTH CRAM-MD5")
            if code == 334:
                code, lines = await self.command(sasl.cram_md5_response(user, secret, lines[0].encode()).decode(), step="AUTH")
        elif self.tls and "PLAIN" in offered:
            code, lines = await self.command("AUTH PLAIN " + sasl.plain_response(user, secret).decode(), step="AUTH")
        elif self.tls and "LOGIN" in offered:
            code, lines = await self.command("AUTH LOGIN")
            for value in (user, secret):
                if code != 334:
                    break
                code, lines = await self.command(sasl.b64encode(value.encode()).decode(), step="AUTH")
        else:
            why = "offers no AUTH" if not offered else "offers only %s, which needs TLS" % " ".join(offered)
            raise SMTPError(504, "5.7.4 %s %s; the box will not send the secret" % (self.what, why))
        if code != 235:
            raise SMTPError(code, "%s refused the login of %s: %s" % (self.what, user, " ".join(lines)))
        log.info("%s: logged in as %s" % (self.what, user))

    # --- replies and commands ------------------------------------------------
    async def reply(self, timeout=None, step="reply"):
        try:
            return await asyncio.wait_for(wire.read_reply(self.lines), timeout or self.command_timeout)
        except asyncio.TimeoutError:  # before OSError: on CPython it is one
            raise SMTPError(421, "4.4.2 %s: no %s within %ds" % (self.what, step, timeout or self.command_timeout))
        except EOFError:
            raise SMTPError(421, "4.4.2 %s closed the connection (waiting for the %s)" % (self.what, step))
        except wire.ProtocolError as e:
            raise SMTPError(421, "4.5.0 %s: bad reply to the %s: %s" % (self.what, step, e))
        except wire.LineTooLong:
            raise SMTPError(421, "4.5.0 %s: reply line too long (%s)" % (self.what, step))
        except OSError as e:
            raise SMTPError(421, "4.4.2 %s: connection error (%s): %s" % (self.what, step, e))

    async def send(self, data, timeout=None):
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), timeout or self.command_timeout)
        except asyncio.TimeoutError:
            raise SMTPError(421, "4.4.2 %s: not reading what the box sends" % self.what)
        except OSError as e:
            raise SMTPError(421, "4.4.2 %s: connection lost while sending: %s" % (self.what, e))

    async def command(self, line, timeout=None, step=None):
        """Sends one command line and returns its reply (code, [lines]).
        `step` names it in errors (a SASL line must never be quoted)."""
        await self.send(line.encode() + b"\r\n")
        return await self.reply(timeout, "reply to " + (step or line[:4]))

    # --- mail ----------------------------------------------------------------
    def max_size(self):
        try:
            return int(self.ext.get("SIZE", "0").split()[0])
        except (ValueError, IndexError):
            return 0

    async def send_message(self, mail_from, rcpts, body, size):
        """Sends one message; returns [[address, code, text]] per recipient.
        A recipient is delivered only if its own code is 250: the RCPT's 2xx
        and then the server's 250 after the final dot. Connection failures
        raise SMTPError (the caller keeps the message)."""
        limit = self.max_size()
        if limit and size > limit:
            text = "5.3.4 The message (%d bytes) is larger than %s accepts (%d bytes)" % (size, self.what, limit)
            return [[a, 552, text] for a in rcpts]
        params = ""
        if "SIZE" in self.ext:
            params += " SIZE=%d" % size
        if "8BITMIME" in self.ext:
            params += " BODY=8BITMIME"
        cmds = ["MAIL FROM:<%s>%s" % (mail_from, params)]
        for a in rcpts:
            cmds.append("RCPT TO:<%s>" % a)
        cmds.append("DATA")
        replies = []
        if "PIPELINING" in self.ext:
            # One write for the whole group (RFC 2920), then the replies in order.
            await self.send("".join(c + "\r\n" for c in cmds).encode())
            for c in cmds:
                replies.append(await self.reply(self.data_init_timeout if c == "DATA" else None, "reply to " + c[:4]))
        else:
            replies.append(await self.command(cmds[0]))
            if replies[0][0] < 400:
                for c in cmds[1:-1]:
                    replies.append(await self.command(c))
                if any(code < 300 for code, _ in replies[1:]):
                    replies.append(await self.command("DATA", self.data_init_timeout))
        return await self._finish(rcpts, replies, body)

    async def _finish(self, rcpts, replies, body):
        mail = replies[0]
        if mail[0] >= 400:
            await self._rset()
            return [[a, mail[0], " ".join(mail[1])] for a in rcpts]
        results = []
        for i, a in enumerate(rcpts):
            code, lines = replies[1 + i] if 1 + i < len(replies) else (503, ["not tried"])
            results.append([a, code, " ".join(lines)])
        data = replies[1 + len(rcpts)] if len(replies) > 1 + len(rcpts) else None
        accepted = [r for r in results if r[1] < 300]
        if data is None or data[0] != 354:
            await self._rset()
            code, text = (data[0], " ".join(data[1])) if data else (503, "DATA not sent")
            for r in accepted:
                r[1], r[2] = code, text
            return results
        if not accepted:
            # The server said 354 although every RCPT failed: end the empty
            # transaction cleanly (RFC 2920 3.1).
            await self.send(b".\r\n")
            await self.reply(self.data_end_timeout, "reply to the final dot")
            return results
        await self._body(body)
        code, lines = await self.reply(self.data_end_timeout, "reply to the final dot")
        for r in accepted:
            r[1], r[2] = code, " ".join(lines)
        return results

    async def _body(self, body):
        """Streams the message dot-stuffed: a line that starts with '.' gets
        one more; ends with CRLF.CRLF (adding a CRLF if the body lacks one)."""
        if self.buf is None:
            self.buf = bytearray(self.chunk_size)
        buf = self.buf
        mv = memoryview(buf)
        bol = True
        while True:
            n = body.readinto(buf)
            if not n:
                break
            start = 0
            if bol and buf[0] == _DOT:
                self.writer.write(b".")
            i = buf.find(b"\n.", 0, n)
            while i >= 0:
                self.writer.write(mv[start : i + 1])
                self.writer.write(b".")
                start = i + 1
                i = buf.find(b"\n.", start, n)
            await self.send(mv[start:n], self.data_block_timeout)
            bol = buf[n - 1] == _LF
        await self.send(b".\r\n" if bol else b"\r\n.\r\n", self.data_block_timeout)

    async def _rset(self):
        code, lines = await self.command("RSET")
        if code != 250:
            raise SMTPError(code, "%s refused RSET: %s" % (self.what, " ".join(lines)))

    # --- the end -------------------------------------------------------------
    async def quit(self):
        """QUIT politely; a server that hangs up without its 221 is fine."""
        try:
            await self.send(b"QUIT\r\n", self.quit_timeout)
            await self.reply(self.quit_timeout, "reply to QUIT")
        except SMTPError:
            pass
        await self.close()

    async def close(self):
        # MicroPython's Stream.close() does nothing; wait_closed() closes.
        try:
            self.writer.close()
            await self.writer.wait_closed()
        except Exception:  # noqa: BLE001 - a broken connection is closed all the same
            pass
