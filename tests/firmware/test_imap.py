# The IMAP server's session layer and INBOX over scripted streams (the bytes
# a client sends, split where a test says), on both runtimes; imaplib against
# the simulated box is in tests/e2e/test_imap_clients.py.
import support
from gateway.guard import Logins
from gateway.imap import session as imap
from gateway.imap.folder import Folder
from gateway.mailbox import Mailboxes
from gateway.policy import Policy
from gateway.spool import Spool

# The IMAP modules (.mpy) beside the store's, the test's own code and the
# message bodies; the session itself takes 3.5 KB of buffers.
MICROPYTHON_HEAP = "256k"

CFG = dict(support.OFFICE, smtp={"allow": ["127.0.0.0/8"]})

PLAIN = (b"From: Ann Example <ann@outside.test>\r\nTo: alice@example.test, \"Bob, B.\" <bob@example.test>\r\n"
         b"Subject: hello there\r\nMessage-ID: <m1@outside.test>\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n\r\n"
         b"line one\r\nline two\r\n")
MULTI = (b"From: carol@outside.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\n"
         b"Content-Type: text/plain; charset=utf-8\r\n\r\nthe text\r\n--XX\r\n"
         b"Content-Type: multipart/alternative; boundary=YY\r\n\r\n--YY\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n"
         b"--YY--\r\n--XX\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
         b"QUJD\r\n--XX--\r\nepilogue\r\n")
RP = b"Return-Path: <sender@outside.test>\r\n"


def box_with(*messages):
    root = support.tmpdir()
    policy = Policy(CFG)
    spool = Spool(root + "/spool")
    spool.recover()
    boxes = Mailboxes(root + "/mail", policy, spool)
    ids = []
    for m in messages:
        d = spool.begin("sender@outside.test", [("alice@example.test", "local")])
        d.write(m)
        ids.append(d.commit())
    boxes.deliver_pending(spool)
    return boxes, ids


class Flood(support.ScriptedStream):
    """A scripted stream where a number among the chunks stands for that
    many bytes of "x", made as they are read (10 MB in no test's heap)."""

    async def readinto(self, buf):
        if self.chunks and isinstance(self.chunks[0], int):
            n = min(self.chunks[0], len(buf))
            for i in range(n):
                buf[i] = 120
            self.chunks[0] -= n
            if not self.chunks[0]:
                self.chunks.pop(0)
            return n
        return await super().readinto(buf)


def talk(boxes, *chunks, tls=None):
    """What the server says to a client that sends these chunks, then
    closes; the session runs to its end."""
    stream = Flood(chunks)
    s = imap.IMAPSession(stream, stream, boxes, tls, "127.0.0.1", clock=lambda: 1764600000)
    support.run(s.run())
    return bytes(stream.out)


def tagged(out, tag):
    """The tagged reply line of tag."""
    for line in out.split(b"\r\n"):
        if line.startswith(tag + b" "):
            return line
    raise AssertionError("no reply tagged %r in %r" % (tag, out))


LOGIN = b"a1 LOGIN alice alice-pw\r\n"


def test_greeting_capability_noop_logout():
    boxes, _ = box_with()
    out = talk(boxes, b"c1 CAPABILITY\r\nc2 NOOP\r\nc3 LOGOUT\r\n")
    assert out.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    assert b"* CAPABILITY IMAP4rev1 LITERAL+" in out and b"AUTH=PLAIN" in out
    assert b"STARTTLS" not in out  # no certificate configured
    assert tagged(out, b"c1") == b"c1 OK CAPABILITY completed"
    assert tagged(out, b"c2") == b"c2 OK NOOP completed"
    assert b"* BYE logging out\r\nc3 OK LOGOUT completed\r\n" in out


def test_login_with_quoted_strings_and_literals():
    boxes, _ = box_with()
    out = talk(boxes, b'a1 LOGIN "alice" {8}\r\n', b"alice-pw\r\n", b"a2 NAMESPACE\r\n")
    assert b"+ go ahead\r\n" in out
    assert tagged(out, b"a1").startswith(b"a1 OK [CAPABILITY")
    assert b'* NAMESPACE (("" "/")) NIL NIL' in out
    # LITERAL+: no continuation asked for, none sent
    out = talk(boxes, b"a1 LOGIN {5+}\r\nalice {8+}\r\nalice-pw\r\na2 NOOP\r\n")
    assert b"+ go ahead" not in out and tagged(out, b"a1").startswith(b"a1 OK")


def test_authenticate_plain_with_and_without_initial_response():
    from gateway import sasl

    boxes, _ = box_with()
    answer = sasl.plain_response("alice", "alice-pw")
    out = talk(boxes, b"a1 AUTHENTICATE PLAIN " + answer + b"\r\n")
    assert tagged(out, b"a1").startswith(b"a1 OK")
    out = talk(boxes, b"a1 AUTHENTICATE PLAIN\r\n", answer + b"\r\n")
    assert b"+ \r\n" in out and tagged(out, b"a1").startswith(b"a1 OK")
    out = talk(boxes, b"a1 AUTHENTICATE PLAIN\r\n", b"*\r\n", b"a2 AUTHENTICATE CRAM-MD5\r\n")
    assert tagged(out, b"a1").startswith(b"a1 BAD") and tagged(out, b"a2").startswith(b"a2 NO")


def test_commands_need_their_state():
    boxes, _ = box_with()
    out = talk(boxes, b"a1 SELECT INBOX\r\n", b"a2 FETCH 1 FLAGS\r\n", LOGIN, b"a3 FETCH 1 FLAGS\r\n",
               b"a4 LOGIN alice alice-pw\r\n", b"a5 FROB\r\n", b"* NOOP\r\n")
    assert tagged(out, b"a1") == b"a1 BAD log in first"
    assert tagged(out, b"a2") == b"a2 BAD no mailbox selected"
    assert tagged(out, b"a3") == b"a3 BAD no mailbox selected"
    assert tagged(out, b"a4") == b"a4 BAD already logged in"
    assert tagged(out, b"a5") == b"a5 BAD unknown command"
    assert b"* BAD a command starts with its tag" in out


def test_wrong_passwords_are_delayed_counted_and_end_the_session():
    boxes, _ = box_with()
    with support.patched(Logins, DELAY=0.05):
        out = talk(boxes, b"a1 LOGIN alice nope\r\na2 LOGIN alice nope\r\na3 LOGIN bob nope\r\na4 NOOP\r\n")
    assert tagged(out, b"a1") == b"a1 NO [AUTHENTICATIONFAILED] wrong user name or password"
    assert out.endswith(b"a3 NO [AUTHENTICATIONFAILED] wrong user name or password\r\n* BYE too many failed logins\r\n")
    with support.patched(Logins, DELAY=0.05):
        talk(boxes, b"a1 LOGIN alice nope\r\na2 LOGIN alice nope\r\n")  # the fifth failure from this address
        out = talk(boxes, LOGIN)  # locked out: not even the right password is checked
    assert tagged(out, b"a1").startswith(b"a1 NO [UNAVAILABLE] too many failed logins from your address")


def test_no_login_in_clear_while_starttls_is_offered():
    boxes, _ = box_with()
    tls = object()  # offered, never started here
    out = talk(boxes, b"a0 CAPABILITY\r\n", LOGIN, b"a2 AUTHENTICATE PLAIN AGFsaWNlAGFsaWNlLXB3\r\n", tls=tls)
    assert b"STARTTLS LOGINDISABLED" in out and b"AUTH=PLAIN" not in out
    assert tagged(out, b"a1").startswith(b"a1 NO [PRIVACYREQUIRED]")
    assert tagged(out, b"a2").startswith(b"a2 NO [PRIVACYREQUIRED]")
    boxes.policy.cfg["clear_text_logins"] = True
    out = talk(boxes, LOGIN, tls=tls)
    assert tagged(out, b"a1").startswith(b"a1 OK")


def test_bad_input_gets_bad_and_the_session_goes_on():
    boxes, _ = box_with()
    out = talk(boxes, b"a1 LOGIN {4294967295}\r\n", b"a2 NOOP ", 10 << 20, b"\r\n", b"a3 LOGIN " + b"(" * 20 + b"\r\n",
               b"a4 LOGIN \xff\xfe \"x\r\n", b"a5 NO\0OP\r\n", b"a6 LOGIN {3+}\r\nabc \"\r\n",
               b"a7 LOGIN {70000+}\r\n" + b"z" * 100)
    assert tagged(out, b"a1") == b"a1 BAD literal too big"
    assert b"+ go ahead" not in out  # the client was never asked for the literal
    assert b"* BAD line too long" in out
    assert tagged(out, b"a3") == b"a3 BAD too many nested parentheses"
    assert tagged(out, b"a4").startswith(b"a4 BAD")
    assert tagged(out, b"a5") == b"a5 BAD NUL in a command"
    assert tagged(out, b"a6") == b"a6 BAD unterminated quoted string"
    assert out.endswith(b"* BYE literal too big\r\n")  # a LITERAL+ too big to skip ends the session


def test_too_many_bad_commands_end_the_session():
    boxes, _ = box_with()
    out = talk(boxes, *[b"x%d FROB\r\n" % i for i in range(12)])
    assert out.endswith(b"x9 BAD unknown command\r\n* BYE too many bad commands\r\n")


def test_select_fetch_and_the_uids_are_pop3s_uidls():
    boxes, ids = box_with(PLAIN, MULTI)
    size = len(RP) + len(PLAIN)
    out = talk(boxes, LOGIN, b"a2 SELECT INBOX\r\n",
               b"a3 FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)\r\n", b"a4 FETCH 1 BODY.PEEK[]\r\n",
               b"a5 FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject FROM)] BODY.PEEK[]<5.10>)\r\n",
               b"a6 FETCH 1 BODY.PEEK[TEXT]\r\n", b"a7 UID FETCH %d (FLAGS)\r\n" % int(ids[1], 16))
    assert b"* 2 EXISTS\r\n" in out and b"* OK [UNSEEN 1]" in out
    assert b"* OK [UIDNEXT %d]" % (int(ids[1], 16) + 1) in out
    assert tagged(out, b"a2") == b"a2 OK [READ-WRITE] SELECT completed"
    assert (b'* 1 FETCH (UID %d FLAGS () RFC822.SIZE %d INTERNALDATE "' % (int(ids[0], 16), size)) in out
    assert b"* 1 FETCH (BODY[] {%d}\r\n%s%s)\r\n" % (size, RP, PLAIN) in out
    assert (b"* 1 FETCH (BODY[HEADER.FIELDS (Subject FROM)] {62}\r\nFrom: Ann Example <ann@outside.test>\r\n"
            b"Subject: hello there\r\n\r\n BODY[]<5> {10}\r\n" + RP[5:15] + b")\r\n") in out
    assert b"* 1 FETCH (BODY[TEXT] {20}\r\nline one\r\nline two\r\n)" in out
    assert b"* 2 FETCH (UID %d FLAGS ())\r\n" % int(ids[1], 16) in out
    assert tagged(out, b"a7") == b"a7 OK FETCH completed"


def test_body_fetch_sets_seen_and_store_persists_the_flags():
    boxes, ids = box_with(PLAIN, PLAIN + b"2", PLAIN + b"3")
    out = talk(boxes, LOGIN, b"a2 SELECT INBOX\r\na3 FETCH 1 RFC822.HEADER\r\na4 FETCH 1 BODY[TEXT]\r\n"
               b"a5 STORE 2:3 +FLAGS (\\Flagged \\Deleted)\r\na6 STORE 3 -FLAGS.SILENT (\\Deleted)\r\n"
               b"a7 UID STORE %d FLAGS (\\Answered $Junk)\r\n" % int(ids[0], 16))
    assert b"* 1 FETCH (RFC822.HEADER {" in out and b"FLAGS" not in out.split(b"a3 OK")[0].split(b"RFC822.HEADER")[1]
    assert b"line two\r\n FLAGS (\\Seen))" in out
    assert b"* 2 FETCH (FLAGS (\\Flagged \\Deleted))\r\n* 3 FETCH (FLAGS (\\Flagged \\Deleted))\r\n" in out
    assert b"* 3 FETCH (FLAGS (\\Flagged))" in out  # silent, but it changed
    assert b"* 1 FETCH (UID %d FLAGS (\\Answered))" % int(ids[0], 16) in out
    # a new session (another device) sees them, from the card
    out = talk(boxes, LOGIN, b"a2 EXAMINE INBOX\r\na3 FETCH 1:3 FLAGS\r\na4 STORE 1 +FLAGS (\\Seen)\r\n")
    assert b"* 1 FETCH (FLAGS (\\Answered))\r\n* 2 FETCH (FLAGS (\\Flagged \\Deleted))\r\n* 3 FETCH (FLAGS (\\Flagged))" in out
    assert tagged(out, b"a4").startswith(b"a4 NO [READ-ONLY]")


def test_expunge_is_pop3s_deletion():
    boxes, ids = box_with(PLAIN, PLAIN + b"2", PLAIN + b"3", PLAIN + b"4")
    out = talk(boxes, LOGIN, b"a2 SELECT INBOX\r\na3 STORE 1,3:4 +FLAGS (\\Deleted)\r\n"
               b"a4 UID EXPUNGE %d\r\na5 EXPUNGE\r\na6 FETCH 1:* UID\r\n" % int(ids[2], 16))
    assert b"* 3 EXPUNGE\r\na4 OK" in out
    assert b"* 3 EXPUNGE\r\n* 1 EXPUNGE\r\na5 OK" in out
    assert b"* 1 FETCH (UID %d)\r\na6 OK" % int(ids[1], 16) in out
    got = boxes.listing("alice")
    assert [got.uid(i) for i in range(len(got))] == [ids[1]]  # what POP3 lists now


def test_close_expunges_and_unselect_does_not():
    boxes, ids = box_with(PLAIN, PLAIN + b"2")
    talk(boxes, LOGIN, b"a2 SELECT INBOX\r\na3 STORE 1 +FLAGS (\\Deleted)\r\na4 UNSELECT\r\n")
    assert len(boxes.listing("alice")) == 2
    out = talk(boxes, LOGIN, b"a2 SELECT INBOX\r\na3 CLOSE\r\na4 FETCH 1 UID\r\n")
    assert tagged(out, b"a4") == b"a4 BAD no mailbox selected"
    assert len(boxes.listing("alice")) == 1


def test_search_subset():
    boxes, ids = box_with(PLAIN, MULTI, PLAIN.replace(b"hello there", b"other").replace(b"<m1@", b"<m3@"))
    out = talk(boxes, LOGIN, b"a2 SELECT INBOX\r\na3 STORE 2 +FLAGS (\\Seen)\r\n"
               b"a4 SEARCH UNSEEN\r\na5 SEARCH SUBJECT \"HELLO\"\r\na6 UID SEARCH FROM carol\r\n"
               b"a7 SEARCH OR SEEN TO bob SINCE 1-Jan-2020\r\na8 SEARCH NOT (1:2)\r\na9 SEARCH BEFORE 1-Jan-2020\r\n"
               b"b1 SEARCH CHARSET UTF-8 ALL\r\nb2 SEARCH BODY x\r\nb3 SEARCH UID 1:* DELETED\r\n")
    assert b"* SEARCH 1 3\r\na4 OK" in out
    assert b"* SEARCH 1\r\na5 OK" in out
    assert b"* SEARCH %d\r\na6 OK" % int(ids[1], 16) in out
    assert b"* SEARCH 1 2 3\r\na7 OK" in out
    assert b"* SEARCH 3\r\na8 OK" in out
    assert b"* SEARCH\r\na9 OK" in out
    assert b"* SEARCH 1 2 3\r\nb1 OK" in out
    assert tagged(out, b"b2").startswith(b"b2 BAD")
    assert b"* SEARCH\r\nb3 OK" in out


def test_envelope_and_bodystructure():
    boxes, ids = box_with(PLAIN, MULTI)
    out = talk(boxes, LOGIN, b"a2 EXAMINE INBOX\r\na3 FETCH 1 (ENVELOPE BODYSTRUCTURE)\r\na4 FETCH 2 BODYSTRUCTURE\r\n"
               b"a5 FETCH 2 (BODY[1] BODY[2.1] BODY[3.MIME] BODY[4])\r\n")
    assert (b'* 1 FETCH (ENVELOPE ("Tue, 1 Dec 2026 10:00:00 +0000" "hello there" (("Ann Example" NIL "ann" '
            b'"outside.test")) (("Ann Example" NIL "ann" "outside.test")) (("Ann Example" NIL "ann" "outside.test")) '
            b'((NIL NIL "alice" "example.test")("Bob, B." NIL "bob" "example.test")) NIL NIL NIL "<m1@outside.test>") '
            b'BODYSTRUCTURE ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 20 2))') in out
    assert (b'* 2 FETCH (BODYSTRUCTURE (("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 8 1)'
            b'(("TEXT" "HTML" NIL NIL NIL "7BIT" 9 1) "ALTERNATIVE")'
            b'("APPLICATION" "PDF" ("NAME" "a.pdf") NIL NIL "BASE64" 4) "MIXED"))') in out
    assert (b"* 2 FETCH (BODY[1] {8}\r\nthe text BODY[2.1] {9}\r\n<p>hi</p> BODY[3.MIME] {82}\r\n"
            b"Content-Type: application/pdf; name=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b" BODY[4] {0}\r\n)") in out
    assert b"FLAGS (\\Seen)" not in out  # EXAMINE: read-only, nothing marked


def test_list_lsub_status_and_idle():
    boxes, ids = box_with(PLAIN)
    with support.patched(imap.IMAPSession, IDLE_POLL=0.05):
        out = talk(boxes, LOGIN, b'a2 LIST "" "*"\r\na3 LSUB "" INBOX\r\na4 LIST "" ""\r\na5 LIST "" Sent\r\n'
                   b"a6 STATUS INBOX (MESSAGES UNSEEN UIDNEXT UIDVALIDITY)\r\na7 SELECT INBOX\r\na8 IDLE\r\n",
                   b"DONE\r\n")
    assert b'* LIST (\\HasNoChildren) "/" INBOX\r\na2 OK' in out
    assert b'* LSUB (\\HasNoChildren) "/" INBOX\r\na3 OK' in out
    assert b'* LIST (\\Noselect) "/" ""\r\na4 OK' in out
    assert b"\r\na5 OK" in out and b"Sent" not in out.split(b"a5 OK")[0].split(b"a4 OK")[1]
    assert b"* STATUS INBOX (MESSAGES 1 UNSEEN 1 UIDNEXT %d UIDVALIDITY " % (int(ids[0], 16) + 1) in out
    assert b"+ idling\r\na8 OK IDLE terminated" in out


def test_noop_reports_what_pop3_and_new_mail_changed():
    boxes, ids = box_with(PLAIN, PLAIN + b"2")
    stream = support.ScriptedStream([LOGIN, b"a2 SELECT INBOX\r\n"])
    s = imap.IMAPSession(stream, stream, boxes, None, "127.0.0.1")

    async def steps():
        for _ in range(2):
            await s.command(await s.read_command())
        boxes.expunge("alice", [ids[0]])  # a POP3 client's QUIT
        spool = boxes.spool
        d = spool.begin("x@outside.test", [("alice@example.test", "local")])
        d.write(PLAIN + b"new")
        new = d.commit()
        stream.chunks.append(b"a3 NOOP\r\n")
        await s.command(await s.read_command())
        return new

    new = support.run(steps())
    out = bytes(stream.out)
    assert b"* 1 EXPUNGE\r\n* 2 EXISTS\r\na3 OK NOOP completed" in out
    assert s.folder.uid(1) == int(new, 16) and s.folder.uidnext == int(new, 16) + 1


def test_uidvalidity_stays_and_a_late_arrival_below_uidnext_renews_it():
    boxes, ids = box_with(PLAIN, PLAIN + b"2")
    clock = lambda: 1764600000  # noqa: E731
    first = Folder(boxes, "alice", False, clock)
    again = Folder(boxes, "alice", False, clock)
    assert (again.uidvalidity, again.uidnext) == (first.uidvalidity, int(ids[1], 16) + 1)
    # A message whose spool id was taken before ids[1]'s lands after it.
    spool = boxes.spool
    late = spool.begin("x@outside.test", [("alice@example.test", "local")])
    on_time = spool.begin("x@outside.test", [("alice@example.test", "local")])
    on_time.write(PLAIN + b"on time")
    on_time.commit()
    seen = Folder(boxes, "alice", False, clock)
    assert seen.uidvalidity == first.uidvalidity and len(seen) == 3
    late.write(PLAIN + b"late")
    late.commit()
    after = Folder(boxes, "alice", False, clock)
    assert len(after) == 4 and after.uidvalidity == first.uidvalidity + 1


def test_flags_survive_a_torn_write_as_old_or_new():
    from gateway.imap import slots

    path = support.tmpdir() + "/f.flg"
    page = bytearray(256)
    page[3] = 1
    gen = slots.write(path, page, 0)
    page[3] = 9
    gen2 = slots.write(path, page, gen)
    got = bytearray(256)
    assert slots.read(path, got) == gen2 and got[3] == 9
    with open(path, "r+b") as f:  # the newer slot torn half way
        f.seek((gen2 & 1) * 512 + 100)
        f.write(b"\xff" * 50)
    assert slots.read(path, got) == gen and got[3] == 1 and got[100] == 0


def test_made_up_commands_cost_no_heap_for_good():
    support.needs_micropython("gc.mem_alloc")
    import gc

    boxes, _ = box_with(PLAIN)

    def words(first):
        return b"".join(b"t%d %s\r\n" % (n, "".join(chr(65 + int(d)) for d in "%04d" % n).encode())
                        for n in range(first, first + 9))

    talk(boxes, LOGIN, words(0))
    gc.collect()
    before = gc.mem_alloc()
    for k in range(30):
        talk(boxes, LOGIN, words(1000 + 9 * k))
    gc.collect()
    assert gc.mem_alloc() - before < 2048, gc.mem_alloc() - before
