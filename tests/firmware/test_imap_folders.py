# IMAP's folders, scripted, on both runtimes: LIST with special use, STATUS,
# IDLE, APPEND (in the buffer, streamed, refused), COPY and MOVE with
# UIDPLUS's codes, CREATE, RENAME and DELETE.
import support
from gateway.imap import session as imap
from imap_support import LOGIN, PLAIN, box_with, talk, tagged

# The IMAP modules (.mpy) beside the store's, this module compiled from
# source with its message bodies, a session's 3.5 KB of buffers, and the
# scripted stream's record of all the server said (a 5 KB message fetched
# whole) in one bytearray that grows: 256k left that no block for it.
MICROPYTHON_HEAP = "320k"


def test_list_lsub_status_and_idle():
    boxes, ids = box_with(PLAIN)
    with support.patched(imap.IMAPSession, IDLE_POLL=0.05):
        out = talk(boxes, LOGIN, b'a2 LIST "" "*"\r\na3 LSUB "" inbox\r\na4 LIST "" ""\r\na5 LIST "" Nothing\r\n'
                   b"a6 STATUS INBOX (MESSAGES UNSEEN UIDNEXT UIDVALIDITY)\r\na7 SELECT INBOX\r\na8 IDLE\r\n",
                   b"DONE\r\n")
    assert (b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n'
            b'* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"\r\n* LIST (\\HasNoChildren \\Trash) "/" "Trash"\r\na2 OK') in out
    assert b'* LSUB (\\HasNoChildren) "/" "INBOX"\r\na3 OK' in out
    assert b'* LIST (\\Noselect) "/" ""\r\na4 OK' in out
    assert b"a4 OK LIST completed\r\na5 OK" in out
    assert b"* STATUS \"INBOX\" (MESSAGES 1 UNSEEN 1 UIDNEXT %d UIDVALIDITY " % (int(ids[0], 16) + 1) in out
    assert b"+ idling\r\na8 OK IDLE terminated" in out


def test_append_to_sent_inline_streamed_and_refused():
    boxes, ids = box_with(PLAIN)
    big = b"Subject: big\r\n\r\n" + b"y" * 5000 + b"\r\n"
    # STATUS first: the folder's count, taken then, must follow the APPENDs
    out = talk(boxes, LOGIN, b"a0 STATUS Sent (MESSAGES)\r\n", b"a2 APPEND Sent (\\Seen) {%d}\r\n" % len(PLAIN),
               PLAIN + b"\r\n",
               b'a3 APPEND Drafts (\\Draft) "01-Feb-2026 10:00:00 +0100" {%d+}\r\n' % len(big), big[:3000], big[3000:] + b"\r\n",
               b"a4 APPEND Nowhere {%d}\r\n" % len(big), b"a5 APPEND Sent {999999999+}\r\n",)
    assert b'* STATUS "Sent" (MESSAGES 0)' in out
    assert b"+ go ahead\r\n" in out
    assert tagged(out, b"a2").startswith(b"a2 OK [APPENDUID ")
    assert tagged(out, b"a3").startswith(b"a3 OK [APPENDUID ")
    assert tagged(out, b"a4") == b"a4 NO [TRYCREATE] no such folder"
    assert out.count(b"+ go ahead") == 1  # neither refused literal was asked for
    assert tagged(out, b"a5") == b"a5 NO [TOOBIG] the message is bigger than smtp.max_size"
    assert out.endswith(b"* BYE literal too big\r\n")  # and 1 GB of LITERAL+ is not waited for
    validity, uid = tagged(out, b"a3").split(b"]")[0].split()[-2:]
    out = talk(boxes, LOGIN, b"a2 SELECT Drafts\r\na3 UID FETCH %s (FLAGS INTERNALDATE BODY.PEEK[])\r\n" % uid,
               b"a4 STATUS Sent (MESSAGES UNSEEN)\r\n")
    assert b"* OK [UIDVALIDITY %s]" % validity in out
    assert b'FLAGS (\\Draft) INTERNALDATE "01-Feb-2026 09:00:00 +0000" BODY[] {%d}\r\nReturn-Path: <>\r\n%s)' % (
        len(big) + 17, big) in out
    assert b'* STATUS "Sent" (MESSAGES 1 UNSEEN 0)' in out
    assert len(boxes.listing("alice")) == 1  # POP3 shows the INBOX alone


def test_copy_and_move_keep_flags_and_give_copyuid():
    boxes, ids = box_with(PLAIN, PLAIN + b"2", PLAIN + b"3")
    out = talk(boxes, LOGIN, b"a2 SELECT INBOX\r\na3 STORE 1 +FLAGS (\\Flagged)\r\na4 COPY 1:2 Trash\r\n"
               b"a5 UID MOVE %d:%d Archive\r\na6 CREATE Archive\r\na7 UID MOVE %d:%d Archive\r\na8 FETCH 1:* UID\r\n" % (
                   int(ids[1], 16), int(ids[2], 16), int(ids[1], 16), int(ids[2], 16)))
    assert tagged(out, b"a4").startswith(b"a4 OK [COPYUID ")
    assert tagged(out, b"a4").split()[4] == b"%d:%d" % (int(ids[0], 16), int(ids[1], 16))
    assert tagged(out, b"a5") == b"a5 NO [TRYCREATE] no such folder"
    assert b"* OK [COPYUID " in out and b"* 3 EXPUNGE\r\n* 2 EXPUNGE\r\na7 OK MOVE completed" in out
    assert b"* 1 FETCH (UID %d)\r\na8 OK" % int(ids[0], 16) in out
    out = talk(boxes, LOGIN, b"a2 EXAMINE Trash\r\na3 FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (Subject)])\r\n"
               b'a4 LIST "" *\r\na5 RENAME Archive Old\r\na6 STATUS Old (MESSAGES)\r\na7 DELETE Old\r\n'
               b"a8 DELETE Sent\r\na9 STATUS Old (MESSAGES)\r\nb1 CREATE Bad/Name\r\nb2 CREATE trash\r\n")
    assert b"* 2 EXISTS" in out and b"* 1 FETCH (FLAGS (\\Flagged) BODY[HEADER.FIELDS (Subject)]" in out
    assert b'* LIST (\\HasNoChildren) "/" "Archive"\r\na4 OK' in out
    assert b'* STATUS "Old" (MESSAGES 2)' in out
    assert tagged(out, b"a7") == b"a7 OK DELETE completed"
    assert tagged(out, b"a8").startswith(b"a8 NO [CANNOT]")
    assert tagged(out, b"a9") == b"a9 NO [NONEXISTENT] no such folder"
    assert tagged(out, b"b1").startswith(b"b1 NO [CANNOT]")
    assert tagged(out, b"b2").startswith(b"b2 NO [ALREADYEXISTS]")


def test_an_empty_folder_is_selected_all_the_same():
    # mbsync: SELECT Drafts (no messages) then CLOSE was answered "BAD no
    # mailbox selected", since an empty folder tested false.
    boxes, _ = box_with()
    out = talk(boxes, LOGIN, b"a2 SELECT Drafts\r\na3 FETCH 1:* FLAGS\r\na4 NOOP\r\na5 CLOSE\r\n")
    assert b"* 0 EXISTS" in out
    assert tagged(out, b"a3") == b"a3 OK FETCH completed"
    assert tagged(out, b"a5") == b"a5 OK CLOSE completed"


def test_folders_a_user_makes_are_limited():
    from gateway.imap import folders

    boxes, _ = box_with()
    with support.patched(folders, MAX_FOLDERS=2):
        out = talk(boxes, LOGIN, b"a2 CREATE One\r\na3 CREATE Two\r\na4 CREATE Three\r\na5 DELETE One\r\n"
                   b"a6 CREATE Three\r\n")
    assert tagged(out, b"a3") == b"a3 OK CREATE completed"
    assert tagged(out, b"a4") == b"a4 NO [LIMIT] 2 folders are the most"
    assert tagged(out, b"a6") == b"a6 OK CREATE completed"
    # the limit changed (a firmware update): the table of names reads the same
    out = talk(boxes, LOGIN, b'a2 LIST "" *\r\n')
    assert b'"Two"\r\n' in out and b'"Three"\r\n' in out and b'"One"' not in out


def test_a_full_card_refuses_copy_and_append_cleanly():
    boxes, ids = box_with(PLAIN)
    boxes.spool.free_bytes = lambda: 0
    out = talk(boxes, LOGIN, b"a2 SELECT INBOX\r\na3 COPY 1 Trash\r\na4 APPEND Sent {5}\r\n", b"hello\r\n",
               b"a5 NOOP\r\n")
    assert tagged(out, b"a3") == b"a3 NO [OVERQUOTA] the card is full"
    assert tagged(out, b"a4") == b"a4 NO [OVERQUOTA] the card is full"
    assert tagged(out, b"a5") == b"a5 OK NOOP completed"


def _folder_with_mail(root, before):
    """alice's INBOX, empty folders named as `before`, and a folder
    "Archive" holding three messages."""
    from gateway.imap import folders

    boxes, ids = box_with(PLAIN, PLAIN + b"2", PLAIN + b"3", root=root)
    for name in before + ("Archive",):
        folders.create(boxes, "alice", name)
    box = folders.mailbox(boxes, "alice", "Archive")
    for i in ids:
        folders.copy(boxes, "alice", int(i, 16), box, bytearray(512))
    return boxes


def _user_folders(root):
    """{name: the subjects of its messages} of alice's own folders, as a
    box booted on root sees them."""
    from gateway.imap import folders
    from mailbox_support import stored

    boxes, _ = box_with(root=root)
    out = {}
    for name, special in folders.names(boxes, "alice")[4:]:
        box = folders.mailbox(boxes, "alice", name)
        got = boxes.listing(box)
        out[name] = [stored(boxes, box, got.uid(i)).rstrip().split(b"\r\n")[-1] for i in range(len(got))]
    return out


# Empty folders made before "Archive": none, and enough that the FAT
# directory entries of "Archive" fill its first sector, so that a new name
# goes into another sector (a FAT rename writes the new entry, then
# deletes the old one).
BEFORE = ((), ("Box1", "Box2", "Box3", "Box4", "Box5", "Box6"))


def _cut_in(change, old, new):
    """change(boxes) with a power cut after every number of block writes
    (and the last sector torn half way): the folders are old or new, never
    a mix, and the box goes on from either."""
    support.needs_micropython()
    for before in BEFORE:
        empty = {name: [] for name in before}
        _cut_rounds(change, dict(old, **empty), dict(new, **empty), before)


def _cut_rounds(change, old, new, before):
    from board import PowerCut
    from gateway.imap import folders
    from mailbox_support import keep_pristine, power_cuts

    template = support.Card()  # room for each folder's duplicate index (128 KB)
    _folder_with_mail(template.root, before)
    keep_pristine(template)
    for card in power_cuts(template):
        boxes, _ = box_with(root=card.root)
        try:
            change(boxes)
        except PowerCut:
            pass
        finished = not card.board.dev.cut  # the tree's removal goes on past an OSError
        card = card.remount()
        got = _user_folders(card.root)
        assert got in (old, new), got
        boxes, _ = box_with(root=card.root)  # and the box goes on: a folder made, filled, listed
        assert folders.create(boxes, "alice", "Next") is None
        folders.copy(boxes, "alice", int(boxes.listing("alice").uid(0), 16), folders.mailbox(boxes, "alice", "Next"),
                     bytearray(512))
        assert _user_folders(card.root) == dict(got, Next=[b"line two"])
        card.unmount()
        assert got == new or not finished


MAIL = [b"line two", b"2", b"3"]


def test_a_power_cut_in_rename_leaves_the_old_name_or_the_new():
    from gateway.imap import folders

    _cut_in(lambda boxes: folders.rename(boxes, "alice", "Archive", "Old"), {"Archive": MAIL}, {"Old": MAIL})


def test_a_power_cut_in_delete_leaves_the_folder_whole_or_gone():
    from gateway.imap import folders

    _cut_in(lambda boxes: folders.delete(boxes, "alice", "Archive"), {"Archive": MAIL}, {})


def test_a_power_cut_in_create_leaves_no_folder_or_an_empty_one():
    from gateway.imap import folders

    _cut_in(lambda boxes: folders.create(boxes, "alice", "New"), {"Archive": MAIL}, {"Archive": MAIL, "New": []})


def test_a_lost_name_table_leaves_the_folders_mail_on_the_card():
    from gateway.imap import folders
    from gateway.record import remove

    boxes = _folder_with_mail(support.tmpdir(), ())
    box = folders.mailbox(boxes, "alice", "Archive")
    remove(boxes.home("alice") + "/folders/names")  # both slots gone: nothing says which folders there are
    out = talk(boxes, LOGIN, b'a2 LIST "" *\r\na3 CREATE Next\r\n')
    assert b'"Archive"' not in out and tagged(out, b"a3") == b"a3 OK CREATE completed"
    assert len(boxes.listing(box)) == 3  # not removed as a leftover, nor emptied for the new folder
