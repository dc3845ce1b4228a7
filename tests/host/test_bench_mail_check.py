"""The whole-box bench's mail check (tests/bench/bench_box.py): a run only
counts if every accepted message is in its recipient's mailbox exactly
once. Stored mail is faked here, laid out as `sdtool export` and the peer
leave it."""
from tests.bench.bench_box import check_mailboxes


def _store(root, box, name, mid, to="<alice@example.test>", body=b"XXXX\n"):
    folder = root / box / "new"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"Return-Path: <pc@lan>\nTo: %s\nMessage-Id: <%s>\n\n%s" % (to.encode(), mid.encode(), body))


def test_every_message_once_in_its_mailbox_passes(tmp_path):
    for i in range(3):
        _store(tmp_path, "alice", f"{i}.msg", f"m{i}")
    (tmp_path / "bob").mkdir()
    assert check_mailboxes(tmp_path, "alice", 3) == []


def test_a_duplicate_a_loss_a_stray_and_a_truncation_are_each_reported(tmp_path):
    _store(tmp_path, "alice", "1.msg", "m1")
    _store(tmp_path, "alice", "2.msg", "m1")
    _store(tmp_path, "alice", "3.msg", "m3", body=b"XX\n")
    _store(tmp_path, "bob", "4.msg", "m4")
    problems = check_mailboxes(tmp_path, "alice", 3)
    assert any("more than once" in p for p in problems)
    assert any("2 distinct messages in alice's mailbox, 3 accepted" in p for p in problems)
    assert any("bob's mailbox" in p for p in problems)
    assert any("different lengths" in p for p in problems)


def test_mail_for_someone_else_in_the_mailbox_is_reported(tmp_path):
    _store(tmp_path, "alice", "1.msg", "m1", to="<bob@example.test>")
    assert check_mailboxes(tmp_path, "alice", 1) == ["1.msg has To: <bob@example.test>"]
