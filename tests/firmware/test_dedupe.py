# The duplicate index (gateway.dedupe): a re-send is found after a reboot once
# flushed, a power cut before the flush costs a duplicate and never a
# message, a lookup reads the same few sectors however much mail went
# before, and a run of messages costs one sync.
import hashlib
import io
import os

import support
from gateway.dedupe import LINE, Seen

# The messages to 100 recipients are built in the test: 3 KB blocks each,
# more than a 64k heap on the 64-bit build has whole beside the runner.
MICROPYTHON_HEAPS = {
    "test_the_key_is_the_body_and_the_message_id_whatever_the_headers": "128k",
    "test_the_key_of_a_message_to_100_recipients_on_a_cut_up_heap": "128k",
}


def _key(n):
    return hashlib.sha256(b"message %d" % n).digest()[:16]


def _table(root):
    seen = Seen(bytearray(512))
    path = root + "/seen"
    seen.make(path)
    return seen, path


def test_a_flushed_record_is_found_after_a_reboot_and_a_new_id_is_a_resend():
    root = support.tmpdir()
    seen, path = _table(root)
    assert seen.first(path, _key(1), "00000001", 1000)
    assert seen.first(path, _key(1), "00000001", 1001)  # its own retry carries on
    assert not seen.first(path, _key(1), "00000009", 1002)  # before the flush too
    seen.flush()
    seen = Seen(bytearray(512))  # a reboot: nothing in RAM
    assert not seen.first(path, _key(1), "00000002", 1003)
    assert seen.first(path, _key(1), "00000001", 1003)
    assert seen.first(path, _key(2), "00000003", 1003)


def test_a_record_outside_the_window_is_free_again():
    root = support.tmpdir()
    seen, path = _table(root)
    seen.first(path, _key(1), "00000001", 1000)
    seen.flush()
    seen.first(path, _key(2), "00000003", 1000)  # still waiting in RAM
    assert seen.first(path, _key(1), "00000002", 1000 + Seen.WINDOW)
    assert seen.first(path, _key(2), "00000004", 1000 + Seen.WINDOW)


def test_records_lost_before_the_flush_cost_a_duplicate_not_a_message():
    root = support.tmpdir()
    seen, path = _table(root)
    assert seen.first(path, _key(1), "00000001", 1000)
    seen = Seen(bytearray(512))  # the power went before the flush
    assert seen.first(path, _key(1), "00000002", 1001)  # delivered again: at-least-once


def test_full_slots_give_way_to_the_oldest_record():
    root = support.tmpdir()
    with support.patched(Seen, SLOTS=8, PROBE=4, PENDING=2):
        seen, path = _table(root)
        for n in range(20):  # 8 slots, 5 keys to a probe window: collisions
            assert seen.first(path, _key(n), "%08x" % n, 1000 + n)
        seen.flush()
        assert os.stat(path)[6] == 8 * 32  # the table never grows
        # The newest keys are still known; every key answers without error.
        assert not seen.first(path, _key(19), "ffffffff", 2000)
        for n in range(20):
            seen.first(path, _key(n), "%08x" % n, 2000)


def test_the_table_replaces_the_index_files_of_earlier_releases():
    root = support.tmpdir()
    for name in ("seen.12", "seen.13"):
        with open(root + "/" + name, "wb") as f:
            f.write(b"x" * 64)
    seen, path = _table(root)
    assert sorted(os.listdir(root)) == ["seen"]
    seen.make(path)  # made once: a second boot keeps it
    assert os.stat(path)[6] == Seen.SLOTS * 32


def test_a_lookup_reads_the_same_sectors_however_many_records_and_a_flush_syncs_once():
    support.needs_micropython()
    card = support.Card(size=4 << 20)
    dev = card.board.dev
    try:
        seen, path = _table(card.root)
        reads = []
        for n in range(3000):
            before = dev.block_reads
            seen.first(path, _key(n), "%08x" % n, 1000)
            if n % Seen.PENDING == 1:  # not a flush: the lookup alone
                reads.append(dev.block_reads - before)
        # The directory entry, the cluster chain, the slots: a few sectors,
        # the same at the 3,000th record as at the first.
        assert max(reads) <= 6 and max(reads[-20:]) <= max(reads[:20]), (reads[:20], reads[-20:])
        seen.flush()
        syncs = dev.syncs
        for n in range(3000, 3000 + Seen.PENDING - 1):
            seen.first(path, _key(n), "%08x" % n, 1000)
        assert dev.syncs == syncs  # waiting in RAM
        seen.first(path, _key(9999), "0000270f", 1000)  # the PENDING-th: one flush
        assert dev.syncs == syncs + 1
    finally:
        card.unmount()


# A message to 100 recipients, as the office day pulls it: a folded To:
# header of 2.5 KB and a header line longer than the 512-byte reads, so
# lines run across reads.
_MANY = b"To: " + b",\r\n ".join(b"staff%d@example.test" % i for i in range(100)) + b"\r\n"
_LONG = b"X-Long: " + b"x" * 600 + b"\r\n"
_BODY = b"hello\r\n" * 50


def _message(msgid, *headers):
    return b"".join(headers) + b"Message-ID: " + msgid + b"\r\n\r\n" + _BODY


def _wanted(msgid):
    return hashlib.sha256(_BODY + b"\0" + msgid).digest()[:16]


def test_the_key_is_the_body_and_the_message_id_whatever_the_headers():
    seen = Seen(bytearray(512))
    assert seen.key(io.BytesIO(_message(b"<a@far.test>", _MANY, _LONG))) == _wanted(b"<a@far.test>")
    assert seen.key(io.BytesIO(_message(b" \t<a@far.test> ", _LONG))) == _wanted(b"<a@far.test>")
    assert seen.key(io.BytesIO(b"message-id:<b@far.test>\r\nMessage-ID: <c@far.test>\r\n\r\n" + _BODY)) == _wanted(b"<b@far.test>")
    assert seen.key(io.BytesIO(_MANY + b"\r\n" + _BODY)) is None  # no Message-ID: never suppressed
    assert seen.key(io.BytesIO(_message(b" ", _MANY))) is None
    # A Message-ID line longer than key() looks at: not suppressed either (a
    # duplicate at worst, never a loss).
    msgid = b"<" + b"m" * LINE + b"@far.test>"
    assert seen.key(io.BytesIO(_message(msgid))) is None
    msgid = msgid[: LINE - len("Message-ID: ") - 2]
    assert seen.key(io.BytesIO(_message(msgid))) == _wanted(msgid)


def test_the_key_of_a_message_to_100_recipients_on_a_cut_up_heap():
    # Issue 11: in the office day the hand-off of the message to 100
    # recipients failed with 30 KB free (MemoryError allocating 513 bytes):
    # the key joined each 512-byte read of the header to what was left of
    # the last. It now looks at the header in the mailbox's buffers only.
    seen = Seen(bytearray(512))
    body = io.BytesIO(_message(b"<many@far.test>", _MANY, _LONG))
    want = _wanted(b"<many@far.test>")
    cut = support.cut_heap(256)
    with support.raises(MemoryError):
        bytearray(512)
    got = seen.key(body)
    cut = None
    assert got == want
