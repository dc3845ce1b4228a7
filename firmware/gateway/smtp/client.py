# The SMTP client: the outbound flush to the smarthost, the ODMR customer up
# to its ATRN (after which the roles reverse and the receiver takes over),
# and the forward to an internal host (gateway.forward).
# Replies go through wire's bounded line reader, so multi-line replies and
# replies split across TCP reads parse the same way; message bodies stream
# from the spool through one fixed buffer, dot-stuffed on the way out.
import asyncio

from gateway import log, wire
from gateway.compat import drain_can_block, no_delay
from gateway.sasl import cram_md5_response
from gateway.wire import SMTPError, reason


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

    def __init__(self, reader, writer, what="server", buf=None):
        # buf: a bytearray to read replies into (the ODMR pull lends the
        # turned line's buffer); else one of line_size is made.
        self.reader = reader
        self.writer = writer
        self.lines = wire.LineReader(reader, self.line_size, buf)
        self.what = what
        self.ext = {}
        self.tls = False
        self.buf = None  # the one body buffer, made at the first message

    # --- set-up --------------------------------------------------------------
    @classmethod
    async def connect(cls, host, port, what, buf=None):
        """A plain TCP connection to host:port, nothing said yet."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), cls.connect_timeout)
        except Exception as e:  # noqa: BLE001 - OSError, gaierror or a timeout, by runtime
            raise SMTPError(421, "4.4.1 %s: cannot connect to %s:%d: %s" % (what, host, port, reason(e) or "timeout"))
        no_delay(writer)
        return cls(reader, writer, what, buf)

    @classmethod
    async def open(cls, conf, hostname, what, buf=None, ctx=None):
        """Connect, TLS as configured, greeting, EHLO, STARTTLS + EHLO, AUTH.
        conf is a validated endpoint (relay, smarthost); ctx, its TLS
        context when the caller made it beforehand (tls.context).
        gateway.tls is loaded only when TLS is on."""
        mode = conf["tls"]
        if mode == "none":
            tls = ctx = None
            log.warn("%s: TLS is off (tls = none): the login and the mail cross the network in clear" % what)
        else:
            from gateway import tls

            ctx = ctx or tls.context(conf, what)
        client = await cls.connect(conf["host"], conf["port"], what, buf)
        try:
            if mode == "implicit":
                await client._upgrade(ctx, tls.server_name(conf))
            await client.greeting()
            await client.ehlo(hostname)
            if ctx and mode != "implicit":  # the validator allows no other mode but starttls
                await client.starttls(ctx, tls.server_name(conf))
                await client.ehlo(hostname)
            if conf["user"]:
                await client.login(conf["user"], conf["secret"])
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
        self.ext = {}
        if code >= 500:
            # An old server that does not know EHLO (RFC 5321 3.2): HELO,
            # and no extensions.
            code, lines = await self.command("HELO " + hostname)
            lines = lines[:1]
        if code != 250:
            raise SMTPError(code, "%s refused EHLO: %s" % (self.what, " ".join(lines)))
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
        crosses the line); PLAIN or LOGIN only inside TLS (gateway.tls)."""
        offered = self.ext.get("AUTH", "").upper().split()
        if "CRAM-MD5" in offered:
            code, lines = await self.command("AUTH CRAM-MD5")
            if code == 334:
                code, lines = await self.command(cram_md5_response(user, secret, lines[0].encode()).decode(), step="AUTH")
        elif self.tls and ("PLAIN" in offered or "LOGIN" in offered):
            code, lines = await self._login_sending_the_secret(user, secret, offered)
        else:
            why = "offers no AUTH" if not offered else "offers only %s, which needs TLS" % " ".join(offered)
            raise SMTPError(504, "5.7.4 %s %s; the box will not send the secret" % (self.what, why))
        if code != 235:
            raise SMTPError(code, "%s refused the login of %s: %s" % (self.what, user, " ".join(lines)))
        log.info("%s: logged in as %s" % (self.what, user))

    async def _login_sending_the_secret(self, user, secret, offered):
        """AUTH PLAIN (else LOGIN), which send the secret itself: only ever
        called on a connection that is inside TLS. -> the final (code, lines)."""
        from gateway.sasl import b64encode, plain_response

        if "PLAIN" in offered:
            return await self.command("AUTH PLAIN " + plain_response(user, secret).decode(), step="AUTH")
        code, lines = await self.command("AUTH LOGIN")
        for value in (user, secret):
            if code != 334:
                break
            code, lines = await self.command(b64encode(value.encode()).decode(), step="AUTH")
        return code, lines

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
        """Writes data (b"": nothing, only the wait), then waits, bounded,
        until the peer has taken all that was written. The bound costs a
        task, so it is set only when something is left to take: a body goes
        out a chunk at a time."""
        try:
            if data:
                self.writer.write(data)
            if drain_can_block(self.writer):
                await asyncio.wait_for(self.writer.drain(), timeout or self.command_timeout)
            else:
                await self.writer.drain()
        except asyncio.TimeoutError:
            raise SMTPError(421, "4.4.2 %s: not reading what the box sends" % self.what)
        except OSError as e:
            raise SMTPError(421, "4.4.2 %s: connection lost while sending: %s" % (self.what, e))

    async def command(self, line, timeout=None, step=None):
        """Sends one command line and returns its reply (code, [lines]).
        `step` names it in errors (a SASL line must never be quoted)."""
        await self.send(line.encode() + b"\r\n")
        return await self.reply(timeout, "reply to " + (step or line[:4]))

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

