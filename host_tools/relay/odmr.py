"""The ODMR listener (RFC 2645): a restricted SMTP profile that only knows
EHLO, STARTTLS, AUTH, ATRN, NOOP, RSET and QUIT. After a successful ATRN the
roles swap and the relay delivers the customer's mail over the same
connection (Relay.turn)."""
import asyncio
import binascii
import logging
import re

from host_tools.relay.config import valid_domain
from host_tools.relay.wire import LineReader, LineTooLong, ProtocolError

log = logging.getLogger("relay.odmr")

_ATRN_ARG = re.compile(r"^[^\s,]+(\s*,\s*[^\s,]+)*$")


def parse_atrn(arg):
    """Domains named by ATRN's argument, lower-cased; None when the syntax is wrong."""
    if not _ATRN_ARG.match(arg):
        return None
    domains = [d.strip().lower() for d in arg.split(",")]
    if len(domains) > 100 or not all(valid_domain(d) for d in domains):
        return None
    return list(dict.fromkeys(domains))


class OdmrSession:
    MAX_LINE = 1000     # RFC 5321 text-line limit; a command must fit (and an AUTH response too)
    MAX_ERRORS = 10     # bad commands before 421

    def __init__(self, relay, reader, writer, tls_context=None, implicit_tls=False):
        self.relay = relay
        self.lines = LineReader(reader, self.MAX_LINE)
        self.writer = writer
        self.tls_context = tls_context
        self.tls = implicit_tls
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.ip = peer[0]
        self.timeout = relay.cfg.limits["timeout"]
        self.errors = 0
        self._reset_state()

    def _reset_state(self):
        self.helo = None
        self.account = None

    async def reply(self, code, *lines):
        text = "".join(f"{code}{'-' if i < len(lines) - 1 else ' '}{line}\r\n" for i, line in enumerate(lines))
        self.writer.write(text.encode())
        await self.writer.drain()

    async def run(self):
        try:
            if self.relay.throttle.blocked(self.ip):
                await self.reply(421, f"4.7.0 {self.relay.cfg.hostname} too many failed or unfinished logins from your address, try later")
                return
            await self.reply(220, f"{self.relay.cfg.hostname} ESMTP ODMR service ready (RFC 2645)")
            while await self._one_command():
                pass
        except (EOFError, OSError, ProtocolError, asyncio.TimeoutError) as e:     # OSError: resets, TLS failures
            if isinstance(e, asyncio.TimeoutError):
                await self._try_reply(421, "4.4.2 idle too long, closing")
            elif isinstance(e, ProtocolError):
                await self._try_reply(421, "4.5.2 no line end, closing")
        finally:
            self.writer.close()

    async def _try_reply(self, code, text):
        try:
            await self.reply(code, text)
        except OSError:
            pass

    async def _readline(self):
        async with asyncio.timeout(self.timeout):  # cancel-safe, unlike 3.11's wait_for
            line = await self.lines.readline()
        if not line.endswith(b"\n"):
            raise EOFError()
        return line.rstrip(b"\r\n")

    async def _one_command(self):
        """Serve one command; False when the session is over."""
        try:
            line = await self._readline()
        except LineTooLong:
            return await self._error(500, "5.5.2 line too long")
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            return await self._error(500, "5.5.2 non-ASCII command")
        verb, _, arg = text.partition(" ")
        method = getattr(self, "smtp_" + verb.upper(), None) if verb.isalpha() else None
        if method is None:
            name = verb[:20] if verb.isalpha() else "that"     # never echo control characters
            return await self._error(502, f"5.5.1 {name}: command not implemented (ODMR profile)")
        return await method(arg.strip()) is not False

    async def _error(self, code, text):
        self.errors += 1
        if self.errors >= self.MAX_ERRORS:
            await self.reply(421, "4.7.0 too many errors, closing")
            return False
        await self.reply(code, text)
        return True

    # -- verbs -------------------------------------------------------------------
    async def smtp_EHLO(self, arg):
        if not arg:
            return await self._error(501, "5.5.4 syntax: EHLO hostname")
        self._reset_state()
        self.helo = arg
        mechs = "CRAM-MD5 PLAIN LOGIN" if self.tls else "CRAM-MD5"
        lines = [f"{self.relay.cfg.hostname} hello {arg}", f"AUTH {mechs}", "ATRN"]
        if self.tls_context and not self.tls:
            lines.append("STARTTLS")
        # No ENHANCEDSTATUSCODES: the turn's reply keeps RFC 2645's exact
        # wording, "250 OK now reversing the connection", without one.
        await self.reply(250, *lines)

    async def smtp_STARTTLS(self, arg):
        if not self.tls_context or self.tls:
            return await self._error(502, "5.5.1 STARTTLS not offered here")
        if arg:
            return await self._error(501, "5.5.4 syntax: STARTTLS")
        await self.reply(220, "2.0.0 ready to start TLS")
        self.lines.drop_buffer()
        await self.writer.start_tls(self.tls_context)
        self.tls = True
        self._reset_state()

    async def smtp_NOOP(self, arg):
        await self.reply(250, "2.0.0 OK")

    async def smtp_RSET(self, arg):
        await self.reply(250, "2.0.0 OK")

    async def smtp_QUIT(self, arg):
        await self.reply(221, f"2.0.0 {self.relay.cfg.hostname} closing connection")
        return False

    async def smtp_AUTH(self, arg):
        if not self.helo:
            return await self._error(503, "5.5.1 EHLO first")
        if self.account:
            return await self._error(503, "5.5.1 already authenticated")
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        if not mech:
            return await self._error(501, "5.5.4 syntax: AUTH mechanism")
        if mech not in ("CRAM-MD5", "PLAIN", "LOGIN"):
            return await self._error(504, "5.5.4 unrecognized authentication mechanism")
        if mech == "CRAM-MD5" and initial:
            return await self._error(501, "5.5.4 CRAM-MD5 takes no initial response")
        if mech != "CRAM-MD5" and not self.tls:
            return await self._error(538, "5.7.11 encryption required for this mechanism, use CRAM-MD5 or STARTTLS")
        throttle = self.relay.throttle
        if not throttle.begin(self.ip):
            await self.reply(421, "4.7.0 too many failed or unfinished logins from your address, try later")
            return False
        try:
            if mech == "CRAM-MD5":
                account = await self._cram_md5()
            else:
                account = await (self._plain(initial) if mech == "PLAIN" else self._login(initial))
            if account is None:
                throttle.failed(self.ip)
        finally:
            throttle.end(self.ip)
        if account is False:
            return True     # the exchange was aborted and already answered
        if account is None:
            log.warning("odmr: failed login from %s", self.ip)
            await asyncio.sleep(throttle.delay)
            return await self._error(535, "5.7.8 authentication credentials invalid")
        self.account = account
        log.info("odmr: %s authenticated as %s", self.ip, account.user)
        await self.reply(235, "2.7.0 authentication successful")

    async def _answer(self, initial, prompt):
        """The client's SASL answer, decoded: from the AUTH line (an initial
        response, "=" for an empty one) or else after a 334 prompt. False
        after answering a cancel, an overlong line or bad base64 itself."""
        if initial:
            line = b"" if initial == "=" else initial.encode()
        else:
            await self.reply(334, prompt)
            try:
                line = await self._readline()
            except LineTooLong:
                await self._error(500, "5.5.2 line too long")
                return False
            if line == b"*":
                await self._error(501, "5.7.0 authentication cancelled")
                return False
        try:
            return binascii.a2b_base64(line, strict_mode=True) if line else b""
        except binascii.Error:
            await self._error(501, "5.5.2 cannot decode base64")
            return False

    @staticmethod
    def _b64(text):
        return binascii.b2a_base64(text.encode(), newline=False).decode()

    async def _cram_md5(self):
        challenge = self.relay.accounts.challenge(self.relay.cfg.hostname)
        answer = await self._answer(None, self._b64(challenge))
        if answer is False:
            return False
        return self.relay.accounts.check_cram_md5(challenge, answer.decode("utf-8", "replace"))

    async def _plain(self, initial):
        blob = await self._answer(initial, "")
        if blob is False:
            return False
        parts = blob.decode("utf-8", "replace").split("\0")
        if len(parts) != 3:
            await self._error(501, "5.5.2 malformed PLAIN response")
            return False
        authz, user, password = parts
        account = self.relay.accounts.check_password(user, password)
        # Acting for another identity (RFC 4616's authzid) is not something an account may do.
        return account if not authz or authz == user else None

    async def _login(self, initial):
        user = await self._answer(initial, self._b64("Username:"))
        password = False if user is False else await self._answer(None, self._b64("Password:"))
        if password is False:
            return False
        return self.relay.accounts.check_password(user.decode("utf-8", "replace"), password.decode("utf-8", "replace"))

    async def smtp_ATRN(self, arg):
        if not self.helo:
            # No mail transaction exists in this profile (MAIL is 502), so the
            # only bad sequence is ATRN before EHLO.
            return await self._error(503, "5.5.1 EHLO first")
        if not self.account:
            return await self._error(530, "5.7.0 authentication required")
        if arg:
            domains = parse_atrn(arg)
            if domains is None:
                return await self._error(501, "5.5.4 syntax: ATRN [domain *(,domain)]")
        else:
            domains = list(self.account.domains)
        refused = [d for d in domains if d not in self.account.domains]
        if refused:
            return await self._error(450, f"4.7.1 ATRN request refused for {refused[0]}")
        code, text = self.relay.claim(domains)
        if code != 250:
            await self.reply(code, text)
            return True
        try:
            await self.reply(250, "OK now reversing the connection")
            log.info("odmr: %s (%s) turned the line for %s", self.ip, self.account.user, ",".join(domains))
            await self.relay.turn(domains, self.lines, self.writer, self.account.user)
        finally:
            self.relay.release(domains)
        return False


async def serve(relay, host, port, tls_context=None, implicit_tls=False):
    """Listen; each connection's task is kept in relay.sessions so a shutdown
    can end them (their mail stays queued)."""
    sessions = relay.sessions

    async def on_connect(reader, writer):
        if len(sessions) >= relay.cfg.limits["max_sessions"]:
            writer.write(b"421 4.3.2 too many connections, try later\r\n")
            writer.close()
            return
        task = asyncio.current_task()
        sessions.add(task)
        try:
            await OdmrSession(relay, reader, writer, tls_context, implicit_tls).run()
        except asyncio.CancelledError:
            pass    # shutdown; asyncio's stream callback would report a cancelled task as an error
        except Exception:
            log.exception("odmr: session failed")
        finally:
            sessions.discard(task)

    ssl = tls_context if implicit_tls else None
    return await asyncio.start_server(on_connect, host, port, ssl=ssl, limit=65536)
