# The POP3 server (RFC 1939, CAPA from RFC 2449) for the office's mail
# clients. One method per command; the mailbox store does the card work.
# Messages are streamed from the card through one small buffer per session,
# dot-stuffed on the way, so a 10 MB message costs what a 1 KB one does.
import asyncio

from gateway import log
from gateway.compat import const, ticks_add, ticks_diff, ticks_ms
from gateway.wire import LineReader, LineTooLong

_LINE = const(256)  # RFC 2449: a command line is at most 255 octets
_BODY = const(512)
_DRAIN = const(2048)  # flush output at least this often while streaming
# The verbs of each state (RFC 1939 §4-5), each a pop_<verb> method.
_AUTHORIZATION = ("CAPA", "QUIT", "USER", "PASS", "STLS")
_TRANSACTION = ("CAPA", "QUIT", "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET", "NOOP")


class POP3Session:
    TIMEOUT = 600  # RFC 1939 autologout: at least 10 minutes of silence
    LOGIN_TIMEOUT = 60  # s from connect to a login, whatever is sent meanwhile (CAPA, USER)
    MAX_ERRORS = 10  # bad commands before we hang up
    # Failed logins: delay, tries per session and lockout in gateway.guard.

    def __init__(self, reader, writer, mailboxes, tls=None, peer=None, clear_text=False):
        self.lines = LineReader(reader, _LINE)
        self.writer = writer
        self.mailboxes = mailboxes
        self.policy = mailboxes.policy
        self.tls = tls  # an ssl context when STLS may be offered
        self.peer = peer  # the client's IP address
        self.clear_text = clear_text  # cfg["clear_text_logins"]: passwords without TLS, for an old client
        self.user = None  # set by USER, then confirmed by PASS
        self.box = None  # the locked mailbox's user after login
        self.msgs = None  # the mailbox's Listing, taken at login
        self.deleted = None
        self.body = bytearray(_BODY)  # taken at connect: no surprise at RETR
        self.errors = 0
        self.failures = 0
        self.done = False
        self.login_by = ticks_add(ticks_ms(), int(self.LOGIN_TIMEOUT * 1000))

    async def reply(self, text):
        self.writer.write(text.encode() + b"\r\n")
        await self.writer.drain()

    async def run(self):
        try:
            await self.reply("+OK POP3 gateway ready")
            while not self.done:
                try:
                    line = await asyncio.wait_for(self.lines.readline(), self._idle_limit())
                except LineTooLong:
                    await self.bad("-ERR line too long")
                    continue
                if not line:
                    break
                try:
                    # MicroPython's decode ignores an errors= argument.
                    line = bytes(line).rstrip(b"\r\n").decode()
                except UnicodeError:
                    await self.bad("-ERR command is not UTF-8 text")
                    continue
                await self.command(line)
        except asyncio.TimeoutError:
            try:
                await self.reply("-ERR autologout: idle for too long")
            except OSError:
                pass
        except OSError:
            pass
        finally:
            # A session that ends without QUIT deletes nothing (RFC 1939 §6).
            if self.box:
                self.mailboxes.unlock(self.box)
                self.box = None

    def _idle_limit(self):
        if self.box:
            return self.TIMEOUT
        return max(0, ticks_diff(self.login_by, ticks_ms())) / 1000

    async def bad(self, text):
        self.errors += 1
        await self.reply(text)
        if self.errors >= self.MAX_ERRORS:
            await self.reply("-ERR too many errors, closing")
            self.done = True

    async def command(self, line):
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        if not verb.isalpha() or len(verb) > 4:
            return await self.bad("-ERR unknown command")
        allowed = _AUTHORIZATION if self.box is None else _TRANSACTION
        if verb not in allowed:
            # Matched against the lists, never looked up by name: getattr on
            # a peer's word would intern it, and the interned names never go.
            known = verb in _AUTHORIZATION or verb in _TRANSACTION
            return await self.bad("-ERR %s not valid in this state" % verb if known else "-ERR unknown command")
        # A password may end in spaces: PASS takes the rest of the line as is.
        await getattr(self, "pop_" + verb.lower())(arg if verb == "PASS" else arg.strip())

    # --- AUTHORIZATION state --------------------------------------------------

    async def pop_capa(self, arg):
        caps = ["+OK capability list follows", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "EXPIRE NEVER",
                "IMPLEMENTATION odmrgw"]
        if not self._in_clear():
            caps.append("USER")
        if self.tls and self.box is None:
            caps.append("STLS")
        caps.append(".")
        await self.reply("\r\n".join(caps))

    def _in_clear(self):
        """True while a password would cross the network in clear and must
        not be taken: STLS is offered and not done yet (RFC 2595 2.2), and
        the config's clear_text_logins does not allow it for an old client."""
        return self.tls is not None and not self.clear_text

    async def pop_user(self, arg):
        if self._in_clear():
            return await self.bad("-ERR STLS first: the password would cross the network in clear")
        if not arg:
            return await self.bad("-ERR USER needs a name")
        self.user = arg
        await self.reply("+OK send PASS")

    async def pop_pass(self, arg):
        user, self.user = self.user, None
        if user is None:
            return await self.bad("-ERR USER first")
        from gateway.guard import Slots, check_password, short_of

        wait = check_password(self.policy, self.peer, user, arg, "pop3")
        if wait > 0:
            self.done = True
            return await self.reply("-ERR [SYS/TEMP] too many failed logins from your address, try again in %d minutes"
                                    % ((wait + 59) // 60))
        if wait:
            self.failures += 1
            await asyncio.sleep(self.policy.logins().DELAY)
            await self.reply("-ERR [AUTH] wrong user name or password")
            if self.failures >= self.policy.logins().SESSION_TRIES:
                self.done = True
            return
        if not self.mailboxes.lock(user):
            return await self.reply("-ERR [IN-USE] mailbox already in use by another session")
        # The listing's 8 bytes a message, and the room every session leaves
        # the rest: a login that would take the heap's last KB waits, rather
        # than leave the pull and the other sessions none (the office day
        # drove the heap to its end with logins retried every 0.1 s).
        self.msgs = None
        if not short_of(8 * min(self.mailboxes.usage(user)[0], self.mailboxes.MAX_LISTED) + Slots.ROOM):
            try:
                self.msgs = self.mailboxes.listing(user)
                self.deleted = bytearray(len(self.msgs))
            except MemoryError:
                self.msgs = None
        if self.msgs is None:
            # Before the mailbox is shown: the client may log in again.
            self.mailboxes.unlock(user)
            self.user = self.msgs = None
            log.warn("pop3: no memory for the listing of %s" % user)
            return await self.reply("-ERR [SYS/TEMP] the box is busy, log in again later")
        self.box = user
        await self.reply("+OK %s has %d messages" % (user, len(self.msgs)))

    async def pop_stls(self, arg):
        if not self.tls:
            return await self.bad("-ERR STLS not available")
        await self.reply("+OK begin TLS negotiation")
        from gateway.wire import server_tls

        self.done = not await server_tls(self.lines, self.writer, self.tls, "pop3")
        self.tls = None  # offered once; CAPA no longer lists it

    async def pop_quit(self, arg):
        self.done = True
        if self.box is None:
            return await self.reply("+OK bye")
        # UPDATE state: the deletions marked in this session happen now.
        gone = sum(self.deleted)
        try:
            if gone:
                self.mailboxes.expunge(self.box, (self.msgs.uid(i) for i in range(len(self.msgs)) if self.deleted[i]))
        except OSError as e:
            log.error("pop3: update for %s failed: %s" % (self.box, e))
            return await self.reply("-ERR [SYS/TEMP] some deleted messages not removed")
        await self.reply("+OK %d messages deleted, bye" % gone)

    # --- TRANSACTION state ------------------------------------------------------

    def _msg(self, arg):
        """The index of message number arg if it exists and is not deleted."""
        if not arg.isdigit():
            return None
        i = int(arg) - 1
        if 0 <= i < len(self.msgs) and not self.deleted[i]:
            return i
        return None

    async def pop_stat(self, arg):
        n = total = 0
        for i in range(len(self.msgs)):
            if not self.deleted[i]:
                n += 1
                total += self.msgs.sizes[i]
        await self.reply("+OK %d %d" % (n, total))

    async def _listing(self, arg, field):
        """field(i): the size (LIST) or the UIDL of message index i."""
        if arg:
            i = self._msg(arg)
            if i is None:
                return await self.bad("-ERR no such message")
            return await self.reply("+OK %d %s" % (i + 1, field(i)))
        self.writer.write(b"+OK\r\n")
        for i in range(len(self.msgs)):
            if not self.deleted[i]:
                self.writer.write(b"%d %s\r\n" % (i + 1, str(field(i)).encode()))
                if i % 32 == 31:
                    await self.writer.drain()
        await self.reply(".")

    async def pop_list(self, arg):
        await self._listing(arg, self.msgs.size)

    async def pop_uidl(self, arg):
        # The spool id: unique, never reused, the same in every session.
        await self._listing(arg, self.msgs.uid)

    async def pop_retr(self, arg):
        await self._send(arg, -1)

    async def pop_top(self, arg):
        num, _, n = arg.partition(" ")
        n = n.strip()
        if not n.isdigit():
            return await self.bad("-ERR usage: TOP msg lines")
        await self._send(num, int(n))

    async def _send(self, arg, body_lines):
        """The message, dot-stuffed; with body_lines >= 0 only the header and
        that many body lines (TOP)."""
        i = self._msg(arg)
        if i is None:
            return await self.bad("-ERR no such message")
        src = self.mailboxes.open_body(self.box, self.msgs.uid(i), self.body)
        if src is None:
            return await self.reply("-ERR [SYS/TEMP] message vanished from the card")
        w = self.writer
        try:
            w.write(b"+OK %d octets\r\n" % self.msgs.sizes[i])
            in_head = True
            unsent = 0
            last = 10
            while True:
                piece = src.piece()
                if not piece:
                    break
                if src.start:
                    if not in_head:
                        if body_lines == 0:
                            break
                        body_lines -= 1
                    elif piece[0] == 13 or piece[0] == 10:
                        in_head = False  # the blank line itself is sent
                    if piece[0] == 46:  # "."
                        w.write(b".")
                w.write(piece)
                last = piece[-1]
                unsent += len(piece)
                if unsent >= _DRAIN:
                    await w.drain()
                    unsent = 0
            w.write(b".\r\n" if last == 10 else b"\r\n.\r\n")
            await w.drain()
        finally:
            src.close()

    async def pop_dele(self, arg):
        i = self._msg(arg)
        if i is None:
            return await self.bad("-ERR no such message")
        self.deleted[i] = 1
        await self.reply("+OK message %d deleted" % (i + 1))

    async def pop_rset(self, arg):
        for i in range(len(self.deleted)):
            self.deleted[i] = 0
        await self.reply("+OK")

    async def pop_noop(self, arg):
        await self.reply("+OK")


async def serve(cfg, mailboxes, host, port, max_sessions=8):
    """The POP3 listener (gateway.guard.listen says who is refused).
    STLS is offered when cfg["pop3"] names a cert and key."""
    from gateway.compat import server_tls
    from gateway.guard import listen

    tls = server_tls(cfg["pop3"], "pop3")
    return await listen(host, port, max_sessions, mailboxes.policy,
                        lambda r, w, ip: POP3Session(r, w, mailboxes, tls, ip, cfg["clear_text_logins"]),
                        "-ERR your network may not use this server", "-ERR [SYS/TEMP] ", "pop3")
