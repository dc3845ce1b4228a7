# The INBOX over IMAP, scripted, on both runtimes: SELECT, FETCH and its
# sections, STORE, EXPUNGE as POP3's deletion, SEARCH, what NOOP reports,
# UIDVALIDITY and the flag records' power-cut rule.
import support
from gateway.imap import session as imap
from gateway.imap.folder import Folder
from imap_support import LOGIN, MULTI, PLAIN, RP, box_with, talk, tagged

# The IMAP modules (.mpy) beside the store's, this module compiled from
# source with its message bodies, and a session's 3.5 KB of buffers.
MICROPYTHON_HEAP = "256k"
# 200 messages delivered at once onto a card image
MICROPYTHON_HEAPS = {"test_a_message_is_read_with_one_search_of_its_bucket_directory": "512k"}


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
    assert b"* 3 FETCH" not in out.split(b"a5 OK")[1].split(b"a6 OK")[0]  # .SILENT: the new flags are not sent
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


def test_a_power_cut_in_store_leaves_the_old_flags_or_the_new_on_fat():
    # On the real VfsFat, a cut after every number of block writes, and with
    # the last sector torn half way: each message's flags are the old ones
    # or the new ones, all of the bucket alike, never a mix.
    support.needs_micropython()
    from board import PowerCut
    from gateway.imap.folder import FLAGGED, SEEN
    from mailbox_support import keep_pristine, power_cuts

    def flags(root):
        boxes, _ = box_with(root=root)
        f = Folder(boxes, "alice", True, lambda: 1764600000)
        return [f.flags[i] & ~128 for i in range(len(f))]

    template = support.Card(size=1 << 20)
    boxes, ids = box_with(PLAIN, PLAIN + b"2", PLAIN + b"3", root=template.root)
    f = Folder(boxes, "alice", False, lambda: 1764600000)
    f.store(f.pick([(1, 3)], False), 1, SEEN)
    keep_pristine(template)
    rounds = 0
    for card in power_cuts(template):
        boxes, _ = box_with(root=card.root)
        f = Folder(boxes, "alice", False, lambda: 1764600000)
        try:
            f.store(f.pick([(1, 3)], False), 1, FLAGGED)
        except PowerCut:
            pass
        finished = not card.board.dev.cut
        card = card.remount()
        got = flags(card.root)
        assert got in ([SEEN] * 3, [SEEN | FLAGGED] * 3), (rounds, got)
        card.unmount()
        assert got == [SEEN | FLAGGED] * 3 or not finished
        rounds += 1
    assert rounds > 2  # a cut came before the end, for each tear


class _Bytes:
    """A message in memory, read as mime.Source reads one from the card."""

    def __init__(self, data):
        self.data, self.size = data, len(data)

    def readinto(self, pos, mv):
        n = max(0, min(len(mv), self.size - pos))
        mv[:n] = self.data[pos : pos + n]
        return n


def test_the_body_starts_where_the_header_scan_says_whatever_the_buffer():
    from gateway.imap import mime

    cases = [PLAIN, b"A: 1\n\nbody", b"\r\nbody only", b"\nbody", b"A: 1\r\nB: 2\r\n", b"", b"A: 1\r\n\r\n",
             b"A: 1\r\n \r\n\tx\r\n\r\nb", b"X: " + b"y" * 700 + b"\r\n\r\nlong line first", b"A: 1\n\r\nmixed"]
    for data in cases:
        src = _Bytes(data)
        for size in (3, 4, 5, 7, 16, 512):
            for start in (0, 3):
                if start > len(data):
                    continue
                want = mime.Header(src, start, len(data), bytearray(512), ()).end
                assert mime.body_start(src, start, len(data), bytearray(size)) == want, (data, size, start)


def test_header_fields_of_many_runs_of_lines_and_their_partial_range():
    # 20 runs of X-A lines (one folded) between Y lines
    head = b"".join(b"X-A: %d\r\n folded %d\r\nY: %d\r\n" % (i, i, i) for i in range(20))
    boxes, ids = box_with(head + b"\r\nbody\r\n")
    want = b"".join(b"X-A: %d\r\n folded %d\r\n" % (i, i) for i in range(20)) + b"\r\n"
    others = b"".join(b"Y: %d\r\n" % i for i in range(20)) + b"\r\n"
    out = talk(boxes, LOGIN, b"a2 EXAMINE INBOX\r\na3 FETCH 1 (BODY.PEEK[HEADER.FIELDS (x-a)] "
               b"BODY.PEEK[HEADER.FIELDS.NOT (X-A Return-Path)] BODY.PEEK[HEADER.FIELDS (X-A)]<9.12>)\r\n")
    assert (b"* 1 FETCH (BODY[HEADER.FIELDS (x-a)] {%d}\r\n%s BODY[HEADER.FIELDS.NOT (X-A Return-Path)] {%d}\r\n%s"
            b" BODY[HEADER.FIELDS (X-A)]<9> {12}\r\n%s)\r\n" % (len(want), want, len(others), others, want[9:21])) in out


def test_a_message_is_read_with_one_search_of_its_bucket_directory():
    # FatFs finds a file by reading its directory's entries a sector at a
    # time: in a bucket of 200 messages, about as many sectors as reading a
    # small message itself. POP3 (open_body) and IMAP (mime.Source) check
    # the record and read it through one open.
    support.needs_micropython()
    from gateway.imap import mime

    card = support.Card()
    boxes, ids = box_with(*[PLAIN + b"%d" % i for i in range(200)], root=card.root)
    dev = card.board.dev
    last = ids[-1]

    def reads(fn):
        before = dev.block_reads
        fn()
        return dev.block_reads - before

    searched = reads(lambda: boxes.info("alice", last))  # the directory, the record's first and last sector
    src = mime.Source(boxes, "alice", int(last, 16))
    assert reads(lambda: src.readinto(0, bytearray(512))) <= 2
    src.close()
    assert reads(lambda: mime.Source(boxes, "alice", int(last, 16)).close()) <= searched
    body = boxes.open_body("alice", last, bytearray(512))
    assert reads(lambda: [body.piece() for _ in range(12)]) <= 2
    body.f.close()
    assert reads(lambda: boxes.open_body("alice", last, bytearray(512)).f.close()) <= searched
    card.unmount()
