# The IMAP4rev1 server (RFC 3501) for the office's mail clients: one method
# per command, matched against the lists of each state (never looked up by
# a client's word, which getattr would intern for good). A command and its
# literals are read into one fixed buffer per session; a literal that does
# not fit is refused before it is read. The mailbox work is in
# gateway.imap.folder, FETCH in .fetch, SEARCH in .search.
import asyncio

from gateway import log
from gateway.compat import const, ticks_add, ticks_diff, ticks_ms
from gateway.imap.parse import Bad, astring, quote, sequence, tokens
from gateway.spool import SpoolFull
from gateway.wire import LineReader, LineTooLong

_LINE = const(1024)
_COMMAND = const(2048)  # a command with its literals
_BODY = const(512)
_TAG = const(64)
_CAPS = b"IMAP4rev1 LITERAL+ SASL-IR ID NAMESPACE IDLE UNSELECT UIDPLUS MOVE SPECIAL-USE"
_INLINE = const(256)  # an APPEND's literal above this goes to the card as it comes, not into the buffer
_FLAGS = b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft)"
# The commands of each state (RFC 3501 §6), each an imap_<command> method.
_ANY = ("CAPABILITY", "NOOP", "LOGOUT", "ID")
_GUEST = ("STARTTLS", "LOGIN", "AUTHENTICATE")
_USER = ("SELECT", "EXAMINE", "LIST", "LSUB", "STATUS", "NAMESPACE", "IDLE", "CHECK", "SUBSCRIBE", "UNSUBSCRIBE",
         "CREATE", "DELETE", "RENAME", "APPEND")
_SELECTED = ("CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UID")
_UID = ("FETCH", "STORE", "SEARCH", "EXPUNGE", "COPY", "MOVE")


class Fatal(Exception):
    """The session cannot go on (a literal too big to skip): BYE and close."""


class IMAPSession:
    TIMEOUT = 1800  # RFC 3501 §5.4: autologout after at least 30 minutes idle
    LOGIN_TIMEOUT = 60  # s from connect to a login, whatever is sent meanwhile
    IDLE_POLL = 30  # s between looks at the mailbox while a client IDLEs
    MAX_ERRORS = 10  # bad commands before we hang up
    DISCARD = 65536  # a LITERAL+ too big for the buffer is skipped up to this; past it, BYE
    # Failed logins: delay, tries per session and lockout in gateway.guard.

    def __init__(self, reader, writer, boxes, tls=None, peer=None, clock=None):
        self.lines = LineReader(reader, _LINE)
        self.writer = writer
        self.boxes = boxes
        self.policy = boxes.policy
        self.tls = tls  # an ssl context while STARTTLS may be offered
        self.peer = peer
        self.clock = clock or _now
        self.cmd = bytearray(_COMMAND)  # taken at connect: no surprise later
        self.cmdmv = memoryview(self.cmd)
        self.body = bytearray(_BODY)
        self.tag = b"*"
        self.user = None
        self.folder = None
        self.pending = None  # (size, non-synchronising) of an APPEND's literal not read yet
        self.errors = self.failures = 0
        self.done = False
        self.login_by = ticks_add(ticks_ms(), int(self.LOGIN_TIMEOUT * 1000))

    # --- the wire ---------------------------------------------------------------
    async def send(self, data):
        self.writer.write(data + b"\r\n")
        await self.writer.drain()

    async def ok(self, text):
        await self.send(self.tag + b" OK " + text)

    async def no(self, text):
        await self.send(self.tag + b" NO " + text)

    async def bad(self, text):
        self.errors += 1
        await self.send(self.tag + b" BAD " + text)
        if self.errors >= self.MAX_ERRORS:
            self.done = True
            await self.send(b"* BYE too many bad commands")

    async def run(self):
        try:
            await self.send(b"* OK [CAPABILITY %s] IMAP4rev1 gateway ready" % self._caps())
            while not self.done:
                self.tag = b"*"
                try:
                    n = await asyncio.wait_for(self.read_command(), self._idle_limit())
                except LineTooLong:
                    await self.bad(b"line too long")
                    continue
                except Bad as e:
                    await self.bad(str(e).encode())
                    continue
                if n < 0:
                    break
                await self.command(n)
        except asyncio.TimeoutError:
            await self._bye(b"autologout: idle for too long")
        except Fatal as e:
            await self._bye(str(e).encode())
        except OSError:
            pass
        finally:
            self.folder = None

    async def _bye(self, text):
        try:
            await self.send(b"* BYE " + text)
        except OSError:
            pass

    def _idle_limit(self):
        if self.user:
            return self.TIMEOUT
        return max(0, ticks_diff(self.login_by, ticks_ms())) / 1000

    async def read_command(self):
        """Reads the next command and its literals into self.cmd, a literal
        as NUL, 8 digits of length and its bytes (gateway.imap.parse);
        returns the length, or -1 at the end of the stream. Raises Bad once
        the whole command is consumed, or Fatal."""
        n = 0
        room = len(self.cmd)
        while True:
            line = await self.lines.readline()
            if not line:
                return -1
            k = len(line)
            k -= line[k - 1] == 10
            k -= k > 0 and line[k - 1] == 13
            if n + k > room:
                raise Bad("command too long")
            self.cmdmv[n : n + k] = line[:k]
            if not n:
                self._tag(k)
            if self.cmd.find(b"\0", n, n + k) >= 0:
                raise Bad("NUL in a command")
            size, plus, at = self._literal(n, n + k)
            if size < 0:
                return n + k
            if size > _INLINE and self.cmd[len(self.tag) + 1 : len(self.tag) + 8].upper() == b"APPEND ":
                self.pending = (size, plus)  # imap_append streams it to the card
                return at
            if at + 9 + size > room:
                if not plus:
                    raise Bad("literal too big")  # the client waits for "+" and sends nothing
                await self._skip(size)
                raise Bad("literal too big")
            self.cmd[at] = 0
            self.cmdmv[at + 1 : at + 9] = b"%08d" % size
            n = at + 9
            if not plus:
                await self.send(b"+ go ahead")
            end = n + size
            while n < end:
                got = await self.lines.readinto(self.cmdmv[n:end])
                if not got:
                    return -1
                n += got

    def _tag(self, k):
        sp = self.cmd.find(b" ", 0, k)
        tag = bytes(self.cmd[:sp]) if 0 < sp <= _TAG else b""
        for c in tag:
            if c < 33 or c > 126 or c in b'(){%*"\\+':
                tag = b""
        self.tag = tag or b"*"

    def _literal(self, start, end):
        """(size, non-synchronising, offset of "{") of a literal that ends
        the line buf[start:end]; size -1 when there is none."""
        if end - start < 3 or self.cmd[end - 1] != 125:  # }
            return -1, False, 0
        at = self.cmd.rfind(b"{", start, end)
        digits = bytes(self.cmd[at + 1 : end - 1]) if at >= 0 else b""
        plus = digits[-1:] == b"+"
        if plus:
            digits = digits[:-1]
        if not digits or not digits.isdigit() or len(digits) > 10:
            return -1, False, 0
        return int(digits), plus, at

    async def _skip(self, size):
        if size > self.DISCARD:
            raise Fatal("literal too big")
        while size:
            got = await self.lines.readinto(self.cmdmv[: min(size, len(self.cmd))])
            if not got:
                raise Fatal("connection closed in a literal")
            size -= got

    async def command(self, n):
        try:
            await self._command(n)
        finally:
            await self._unread()

    async def _command(self, n):
        if self.tag == b"*":
            return await self.bad(b"a command starts with its tag")
        try:
            toks = tokens(self.cmd, n, len(self.tag) + 1)
        except Bad as e:
            return await self.bad(str(e).encode())
        verb = toks[0].upper() if toks and isinstance(toks[0], str) and len(toks[0]) <= 12 else ""
        if verb in _ANY:
            pass
        elif verb in _GUEST:
            if self.user:
                return await self.bad(b"already logged in")
        elif verb in _USER:
            if not self.user:
                return await self.bad(b"log in first")
        elif verb in _SELECTED:
            if self.folder is None:
                return await self.bad(b"no mailbox selected")
        else:
            return await self.bad(b"unknown command")
        try:
            await getattr(self, "imap_" + verb.lower())(toks[1:])
        except Bad as e:
            await self.bad(str(e).encode())
        except MemoryError:
            await self.no(b"[LIMIT] not enough memory for that now")
        except SpoolFull:
            await self.no(b"[OVERQUOTA] the card is full")
        except OSError as e:
            log.warn("imap: card error for %s: %r" % (self.user, e))
            await self.no(b"[UNAVAILABLE] the card could not be read or written")

    async def _unread(self):
        """An APPEND literal the command did not take: a synchronising one
        was never asked for; a LITERAL+ is on its way and is skipped."""
        pending, self.pending = self.pending, None
        if pending and pending[1]:
            await self._skip(pending[0])
            await self.lines.readline()  # the CRLF that ends the command

    # --- any state ----------------------------------------------------------------
    def _caps(self):
        caps = _CAPS
        if not self.user:
            if self.tls:
                caps += b" STARTTLS"
            caps += b" LOGINDISABLED" if self._in_clear() else b" AUTH=PLAIN"
        return caps

    def _in_clear(self):
        """True while a password would cross the network in clear and must
        not be taken: STARTTLS is offered and not done (RFC 3501 §6.2.3),
        and clear_text_logins does not allow it for an old client."""
        return self.tls is not None and not self.policy.cfg.get("clear_text_logins")

    async def imap_capability(self, args):
        await self.send(b"* CAPABILITY " + self._caps())
        await self.ok(b"CAPABILITY completed")

    async def imap_noop(self, args):
        if self.folder is not None:
            await self._changes()
        await self.ok(b"NOOP completed")

    imap_check = imap_noop

    async def imap_logout(self, args):
        self.done = True
        await self.send(b"* BYE logging out")
        await self.ok(b"LOGOUT completed")

    async def imap_id(self, args):
        # RFC 2971: what the client says of itself is not kept.
        await self.send(b'* ID ("name" "odmrgw")')
        await self.ok(b"ID completed")

    # --- not authenticated ------------------------------------------------------------
    async def imap_starttls(self, args):
        if not self.tls:
            return await self.bad(b"STARTTLS not available")
        await self.ok(b"begin TLS negotiation now")
        from gateway.wire import server_tls

        self.done = not await server_tls(self.lines, self.writer, self.tls, "imap")
        self.tls = None  # offered once; CAPABILITY no longer lists it

    async def imap_login(self, args):
        if self._in_clear():
            return await self.no(b"[PRIVACYREQUIRED] STARTTLS first: the password would cross the network in clear")
        if len(args) != 2:
            raise Bad("usage: LOGIN user password")
        await self._login(astring(args[0]), astring(args[1]))

    async def imap_authenticate(self, args):
        if not args or not isinstance(args[0], str) or args[0].upper() != "PLAIN" or len(args) > 2:
            return await self.no(b"[CANNOT] only AUTHENTICATE PLAIN is offered")
        if self._in_clear():
            return await self.no(b"[PRIVACYREQUIRED] STARTTLS first: the password would cross the network in clear")
        if len(args) == 2:
            answer = astring(args[1]).encode()
        else:
            await self.send(b"+ ")
            line = await self.lines.readline()  # LineTooLong: BAD, the session goes on
            answer = bytes(line).rstrip(b"\r\n")
        if answer == b"*":
            raise Bad("AUTHENTICATE cancelled")
        from gateway import sasl

        try:
            user, password = sasl.plain_parse(answer)
        except (sasl.SaslError, UnicodeError):
            raise Bad("malformed PLAIN response")
        await self._login(user, password)

    async def _login(self, user, password):
        from gateway.guard import check_password

        wait = check_password(self.policy, self.peer, user, password, "imap")
        if wait > 0:
            self.done = True
            return await self.no(b"[UNAVAILABLE] too many failed logins from your address, try again in %d minutes"
                                 % ((wait + 59) // 60))
        if wait:
            self.failures += 1
            await asyncio.sleep(self.policy.logins().DELAY)
            await self.no(b"[AUTHENTICATIONFAILED] wrong user name or password")
            if self.failures >= self.policy.logins().SESSION_TRIES:
                self.done = True
                await self.send(b"* BYE too many failed logins")
            return
        self.user = user
        await self.ok(b"[CAPABILITY %s] logged in" % self._caps())

    # --- authenticated: folders ---------------------------------------------------------
    async def imap_namespace(self, args):
        await self.send(b'* NAMESPACE (("" "/")) NIL NIL')
        await self.ok(b"NAMESPACE completed")

    async def imap_list(self, args):
        await self._list(args, b"LIST")

    async def imap_lsub(self, args):
        await self._list(args, b"LSUB")  # every folder counts as subscribed

    async def _list(self, args, what):
        if len(args) != 2:
            raise Bad("usage: %s reference pattern" % what.decode())
        from gateway.imap.folders import names

        ref, pattern = astring(args[0]), astring(args[1])
        if not pattern and what == b"LIST":
            await self.send(b'* LIST (\\Noselect) "/" ""')
        else:
            pattern = ref + pattern
            for name, use in names(self.boxes, self.user):
                # INBOX is INBOX in any case (RFC 3501 §5.1); other names as made
                if _matches(name, pattern.upper() if name == "INBOX" else pattern):
                    self.writer.write(b"* %s (\\HasNoChildren%s) \"/\" %s\r\n" % (what, b" " + use if use else b"",
                                                                                   quote(name)))
        await self.ok(what + b" completed")

    def _box(self, name):
        """The Mailboxes name of an existing folder, made on first use if
        it is a special one; None when there is no such folder."""
        from gateway.imap import folders

        box = folders.mailbox(self.boxes, self.user, astring(name))
        if box is not None and box != self.user:
            folders.made(self.boxes, box)
        return box

    async def imap_subscribe(self, args):
        if len(args) != 1 or not self._box(args[0]):
            return await self.no(b"[NONEXISTENT] no such folder")
        await self.ok(b"SUBSCRIBE completed")

    async def imap_unsubscribe(self, args):
        if len(args) != 1:
            raise Bad("usage: UNSUBSCRIBE folder")
        await self.ok(b"UNSUBSCRIBE completed")

    async def imap_create(self, args):
        from gateway.imap import folders

        if len(args) != 1:
            raise Bad("usage: CREATE folder")
        name = astring(args[0]).rstrip("/")
        why = folders.create(self.boxes, self.user, name)
        await (self.no(why) if why else self.ok(b"CREATE completed"))

    async def imap_delete(self, args):
        from gateway.imap import folders

        await self._change_folder(args, 1, b"DELETE", lambda: folders.delete(self.boxes, self.user, astring(args[0])))

    async def imap_rename(self, args):
        from gateway.imap import folders

        await self._change_folder(args, 2, b"RENAME",
                                  lambda: folders.rename(self.boxes, self.user, astring(args[0]), astring(args[1])))

    async def _change_folder(self, args, n, what, change):
        """DELETE or RENAME of args[0], never the folder this session has open."""
        from gateway.imap.folders import mailbox

        if len(args) != n:
            raise Bad("usage: %s folder%s" % (what.decode(), " newname" if n > 1 else ""))
        if self.folder is not None and self.folder.user == mailbox(self.boxes, self.user, astring(args[0])):
            return await self.no(b"[INUSE] close the folder first")
        why = change()
        await (self.no(why) if why else self.ok(what + b" completed"))

    async def imap_status(self, args):
        if len(args) != 2 or not isinstance(args[1], list):
            raise Bad("usage: STATUS folder (items)")
        box = self._box(args[0])
        if box is None:
            return await self.no(b"[NONEXISTENT] no such folder")
        from gateway.imap.folder import SEEN, Folder

        f = Folder(self.boxes, box, True, self.clock)
        out = []
        for item in args[1]:
            item = item.upper() if isinstance(item, str) else ""
            if item == "MESSAGES":
                out.append(b"MESSAGES %d" % len(f))
            elif item == "RECENT":
                out.append(b"RECENT 0")
            elif item == "UIDNEXT":
                out.append(b"UIDNEXT %d" % f.uidnext)
            elif item == "UIDVALIDITY":
                out.append(b"UIDVALIDITY %d" % f.uidvalidity)
            elif item == "UNSEEN":
                out.append(b"UNSEEN %d" % sum(1 for i in range(len(f)) if not f.flags[i] & SEEN))
            else:
                raise Bad("unknown STATUS item")
        await self.send(b"* STATUS %s (%s)" % (quote(astring(args[0])), b" ".join(out)))
        await self.ok(b"STATUS completed")

    async def imap_select(self, args):
        await self._select(args, False)

    async def imap_examine(self, args):
        await self._select(args, True)

    async def _select(self, args, readonly):
        self.folder = None  # RFC 3501 §6.3.1: a failed SELECT leaves none selected
        if len(args) != 1:
            raise Bad("usage: SELECT folder")
        box = self._box(args[0])
        if box is None:
            return await self.no(b"[NONEXISTENT] no such folder")
        from gateway.imap.folder import SEEN, Folder

        f = Folder(self.boxes, box, readonly, self.clock)
        w = self.writer
        w.write(b"* %d EXISTS\r\n* 0 RECENT\r\n" % len(f))
        for i in range(len(f)):
            if not f.flags[i] & SEEN:
                w.write(b"* OK [UNSEEN %d] first unseen\r\n" % (i + 1))
                break
        w.write(b"* OK [UIDVALIDITY %d] UIDs valid\r\n* OK [UIDNEXT %d] next UID\r\n" % (f.uidvalidity, f.uidnext))
        w.write(b"* FLAGS %s\r\n* OK [PERMANENTFLAGS %s] flags kept\r\n" % (_FLAGS, b"()" if readonly else _FLAGS))
        self.folder = f
        await self.ok(b"[READ-ONLY] EXAMINE completed" if readonly else b"[READ-WRITE] SELECT completed")

    async def imap_idle(self, args):
        """RFC 2177: updates as they come until the client sends DONE."""
        await self.send(b"+ idling")
        until = ticks_add(ticks_ms(), int(self.TIMEOUT * 1000))
        while True:
            left = ticks_diff(until, ticks_ms()) / 1000
            if left <= 0:
                raise asyncio.TimeoutError()
            try:
                line = await asyncio.wait_for(self.lines.readline(), min(left, self.IDLE_POLL))
            except asyncio.TimeoutError:
                if self.folder is not None:
                    await self._changes()
                continue
            if not line:
                self.done = True
                return
            if bytes(line).rstrip(b"\r\n").upper() == b"DONE":
                return await self.ok(b"IDLE terminated")
            return await self.bad(b"IDLE ends with DONE")

    async def _changes(self):
        """Tells the client what other sessions, POP3 and new mail changed."""
        from gateway.imap.folder import flag_names

        f = self.folder
        gone, changed, new = f.rescan()
        w = self.writer
        for n in gone:
            w.write(b"* %d EXPUNGE\r\n" % n)
        for i in changed:
            w.write(b"* %d FETCH (FLAGS (%s))\r\n" % (i + 1, flag_names(f.flags[i]).encode()))
        if new or gone:
            w.write(b"* %d EXISTS\r\n" % len(f))
        await w.drain()

    # --- selected -----------------------------------------------------------------------
    async def imap_close(self, args):
        f, self.folder = self.folder, None
        if not f.readonly:
            f.expunge()
        await self.ok(b"CLOSE completed")

    async def imap_unselect(self, args):
        self.folder = None
        await self.ok(b"UNSELECT completed")

    async def imap_expunge(self, args, marks=None):
        f = self.folder
        if f.readonly:
            return await self.no(b"[READ-ONLY] the folder was opened with EXAMINE")
        for n in f.expunge(marks):
            self.writer.write(b"* %d EXPUNGE\r\n" % n)
        await self.ok(b"EXPUNGE completed")

    def _marks(self, tok, by_uid):
        f = self.folder
        top = (f.uid(len(f) - 1) if len(f) else 0) if by_uid else len(f)
        return f.pick(sequence(tok, top), by_uid)

    async def imap_fetch(self, args, by_uid=False):
        if len(args) != 2:
            raise Bad("usage: FETCH set items")
        from gateway.imap.fetch import Fetcher, items

        marks = self._marks(args[0], by_uid)
        fetcher = Fetcher(self, self.folder, items(args[1], by_uid))
        for i in range(len(marks)):
            if marks[i]:
                await fetcher.message(i)
        await self.ok(b"FETCH completed")

    async def imap_store(self, args, by_uid=False):
        if len(args) != 3 or not isinstance(args[1], str):
            raise Bad("usage: STORE set [+-]FLAGS[.SILENT] (flags)")
        from gateway.imap.folder import flag_bits, flag_names

        f = self.folder
        what = args[1].upper()
        silent = what.endswith(".SILENT")
        what = what[:-7] if silent else what
        mode = 1 if what == "+FLAGS" else -1 if what == "-FLAGS" else 0 if what == "FLAGS" else None
        if mode is None:
            raise Bad("STORE takes FLAGS, +FLAGS or -FLAGS")
        if f.readonly:
            return await self.no(b"[READ-ONLY] the folder was opened with EXAMINE")
        flags = args[2] if isinstance(args[2], list) else [args[2]]
        marks = self._marks(args[0], by_uid)
        picked = b"" if silent else bytes(marks)  # .SILENT: no FETCH for what this STORE set (RFC 3501 §6.4.6)
        f.store(marks, mode, flag_bits(flags))
        w = self.writer
        for i in range(len(picked)):
            if picked[i]:
                w.write(b"* %d FETCH (%sFLAGS (%s))\r\n" % (i + 1, b"UID %d " % f.uid(i) if by_uid else b"",
                                                          flag_names(f.flags[i]).encode()))
                if i % 32 == 31:
                    await w.drain()
        await self.ok(b"STORE completed")

    async def imap_search(self, args, by_uid=False):
        from gateway.imap.search import Match, criteria

        f = self.folder
        match = Match(f, criteria(args, f), self.body)
        w = self.writer
        w.write(b"* SEARCH")
        for i in range(len(f)):
            if match(i):
                w.write(b" %d" % (f.uid(i) if by_uid else i + 1))
        w.write(b"\r\n")
        await self.ok(b"SEARCH completed")

    async def imap_append(self, args):
        """APPEND folder [(flags)] [date-time] message: the message goes to
        the card as it comes (a big literal never enters the buffer)."""
        from gateway.imap import folders
        from gateway.imap.folder import flag_bits

        pending = self.pending
        if not args or not pending and (len(args) < 2 or not isinstance(args[-1], bytes)):
            raise Bad("usage: APPEND folder [(flags)] [date-time] {size}")
        box = self._box(args[0])
        rest = args[1:] if pending else args[1:-1]
        flags = rest.pop(0) if rest and isinstance(rest[0], list) else []
        received = _date_time(rest.pop(0)) if rest and isinstance(rest[0], bytes) else int(self.clock())
        if rest or received is None:
            raise Bad("usage: APPEND folder [(flags)] [date-time] {size}")
        size = pending[0] if pending else len(args[-1])
        if box is None:
            return await self.no(b"[TRYCREATE] no such folder")
        if size > self.policy.cfg["smtp"]["max_size"]:
            return await self.no(b"[TOOBIG] the message is bigger than smtp.max_size")
        spool = self.boxes.spool
        if not spool.room(size):
            return await self.no(b"[OVERQUOTA] the card is full")
        draft = folders.begin(self.boxes, box, "", received)
        try:
            if pending:
                self.pending = None
                if not pending[1]:
                    await self.send(b"+ go ahead")
                await self._stream(draft, size)
            else:
                draft.write(args[-1])
            uid = folders.commit(self.boxes, box, draft)
        except SpoolFull:
            draft.abort()
            return await self.no(b"[OVERQUOTA] the card is full")
        except BaseException:
            draft.abort()
            raise
        bits = flag_bits(flags)
        if bits:
            marks = folders.Flags(self.boxes.home(box))
            marks.set(uid, bits)
            marks.flush()
        await self.ok(b"[APPENDUID %d %d] APPEND completed" % (self._validity(box), uid))

    async def _stream(self, draft, size):
        """size bytes of literal into draft, then the command's CRLF. A card
        that fills up still takes the rest of the literal (into nothing),
        so the session stays in step with the client."""
        mv = self.cmdmv
        full = None
        while size:
            got = await self.lines.readinto(mv[: min(size, len(mv))])
            if not got:
                raise OSError("connection closed in a literal")
            size -= got
            if full is None:
                try:
                    draft.write(mv[:got])
                except SpoolFull as e:
                    full = e
        await self.lines.readline()
        if full:
            raise full

    def _validity(self, box):
        from gateway.imap.folder import Folder

        if self.folder is not None and self.folder.user == box:
            return self.folder.uidvalidity
        return Folder(self.boxes, box, True, self.clock).uidvalidity

    async def imap_copy(self, args, by_uid=False, move=False):
        from gateway.imap import folders

        if len(args) != 2:
            raise Bad("usage: COPY set folder")
        f = self.folder
        marks = self._marks(args[0], by_uid)
        box = self._box(args[1])
        if box is None:
            return await self.no(b"[TRYCREATE] no such folder")
        if move and f.readonly:
            return await self.no(b"[READ-ONLY] the folder was opened with EXAMINE")
        if not self.boxes.spool.room():
            return await self.no(b"[OVERQUOTA] the card is full")
        flags = folders.Flags(self.boxes.home(box))
        old, new = [], []
        try:
            for i in range(len(marks)):
                if marks[i]:
                    try:
                        uid = folders.copy(self.boxes, f.user, f.uid(i), box, self.body)
                    except KeyError:
                        marks[i] = 0  # gone since the listing
                        continue
                    flags.set(uid, f.flags[i])
                    old.append(f.uid(i))
                    new.append(uid)
        finally:
            flags.flush()
        code = b"[COPYUID %d %s %s] " % (self._validity(box), _uid_set(old), _uid_set(new)) if old else b""
        if not move:
            return await self.ok(code + b"COPY completed")
        if code:
            await self.send(b"* OK " + code + b"moved")
        if box != f.user:
            from gateway.imap.folder import DELETED

            f.store(bytearray(marks), 1, DELETED)  # then the same deletion as EXPUNGE's
            for n in f.expunge(marks):
                self.writer.write(b"* %d EXPUNGE\r\n" % n)
        await self.ok(b"MOVE completed")

    async def imap_move(self, args, by_uid=False):
        await self.imap_copy(args, by_uid, True)

    async def imap_uid(self, args):
        verb = args[0].upper() if args and isinstance(args[0], str) else ""
        if verb not in _UID:
            raise Bad("UID takes FETCH, STORE, SEARCH, COPY, MOVE or EXPUNGE")
        if verb == "EXPUNGE":
            if len(args) != 2:
                raise Bad("usage: UID EXPUNGE set")
            return await self.imap_expunge(None, self._marks(args[1], True))
        await getattr(self, "imap_" + verb.lower())(args[1:], True)


def _uid_set(uids):
    """An IMAP set of ascending UIDs: 4:6,9."""
    out = []
    i = 0
    while i < len(uids):
        j = i
        while j + 1 < len(uids) and uids[j + 1] == uids[j] + 1:
            j += 1
        out.append(b"%d" % uids[i] if i == j else b"%d:%d" % (uids[i], uids[j]))
        i = j + 1
    return b",".join(out)


def _date_time(text):
    """Unix seconds of an APPEND date-time ("1-Feb-2026 10:00:00 +0100"),
    None if it is not one."""
    from gateway.imap.search import MONTHS, days

    try:
        date, clock, zone = text.decode().strip().split(" ")
        d, mon, y = date.split("-")
        hh, mi, ss = clock.split(":")
        off = (int(zone[1:3]) * 60 + int(zone[3:5])) * (-1 if zone[0] == "-" else 1)
        return (days(int(y), MONTHS.index(mon.upper()) + 1, int(d)) * 86400 + int(hh) * 3600 + int(mi) * 60 + int(ss)
                - off * 60)
    except (ValueError, IndexError, UnicodeError):
        return None


def _matches(name, pattern):
    """LIST's wildcards: * matches anything, % anything but the delimiter."""
    if not pattern:
        return not name
    p = pattern[0]
    if p in "*%":
        for k in range(len(name) + 1):
            if p == "%" and "/" in name[:k]:
                break
            if _matches(name[k:], pattern[1:]):
                return True
        return False
    return bool(name) and name[0] == p and _matches(name[1:], pattern[1:])


def _now():
    import time

    return time.time()
