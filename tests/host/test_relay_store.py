"""The relay's queue files: commit, per-recipient update, removal, recovery."""
import os

import pytest

from host_tools.relay import store as store_mod
from host_tools.relay.store import OUTBOX, Draft, Store, domain_box


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "q")
    s.recover()
    return s


def test_one_body_hard_linked_into_each_domain(store):
    id = store.commit("x@o.test", {domain_box("a.test"): ["u@a.test"], domain_box("b.test"): ["v@b.test", "w@b.test"]},
                      b"Subject: hi\r\n\r\nbody\r\n")
    a, b = store.list(domain_box("a.test")), store.list(domain_box("b.test"))
    assert [e.rcpts for e in a] == [["u@a.test"]] and [e.rcpts for e in b] == [["v@b.test", "w@b.test"]]
    assert os.stat(store.body_path(a[0].box, id)).st_ino == os.stat(store.body_path(b[0].box, id)).st_ino
    assert not list((store.root / "tmp").iterdir())
    store.update(b[0], ["w@b.test"])
    assert store.envelope(domain_box("b.test"), id).rcpts == ["w@b.test"]
    store.update(store.envelope(domain_box("b.test"), id), [])
    assert store.list(domain_box("b.test")) == []
    assert store.read(store.envelope(domain_box("a.test"), id)) == b"Subject: hi\r\n\r\nbody\r\n"


def test_ids_sort_by_arrival_and_never_name_a_path(store):
    ids = [store.commit("", {OUTBOX: ["r@x.test"]}, b"m\r\n") for _ in range(20)]
    assert [e.id for e in store.list(OUTBOX)] == ids == sorted(ids)
    assert store.find(ids[0])[0][0] == OUTBOX
    assert store.find("../../etc/passwd") == [] and store.find(ids[0].upper()) == []


def test_recover_removes_leftovers_and_keeps_committed_mail(store):
    id = store.commit("x@o.test", {domain_box("a.test"): ["u@a.test"]}, b"m\r\n")
    d = store.root / "domains" / "a.test"
    (store.root / "tmp" / "half.eml").write_bytes(b"partial")
    (d / "0000000000000000deadbeef.eml").write_bytes(b"orphan body")      # its .env never landed
    (d / "0000000000000001deadbeef.env").write_bytes(b"{}")                # a body lost by hand
    kept, removed = Store(store.root).recover()
    assert (kept, removed) == (1, 3)
    assert [e.id for e in store.list(domain_box("a.test"))] == [id]
    assert (d / "0000000000000001deadbeef.broken").exists()


def test_a_failed_commit_leaves_nothing_behind(store, monkeypatch):
    real = os.link
    calls = []

    def link(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(store_mod.os, "link", link)
    with pytest.raises(OSError):
        store.commit("x@o.test", {domain_box("a.test"): ["u@a.test"], domain_box("b.test"): ["v@b.test"]}, b"m\r\n")
    assert store.list(domain_box("a.test")) == [] and store.list(domain_box("b.test")) == []
    assert not any(p.is_file() for p in store.root.rglob("*"))


def test_an_unreadable_envelope_is_set_aside_and_the_rest_still_lists(store):
    ids = [store.commit("x@o.test", {domain_box("a.test"): ["u@a.test"]}, b"m\r\n") for _ in range(3)]
    bad = store.root / "domains" / "a.test" / f"{ids[1]}.env"
    bad.write_text("{not json")
    assert [e.id for e in store.list(domain_box("a.test"))] == [ids[0], ids[2]]
    assert bad.with_suffix(".broken").exists()
    Store(store.root).recover()
    assert bad.with_suffix(".eml").exists()      # its body stays for a human to look at


def test_a_batch_commits_each_draft_and_a_failed_one_leaves_the_others(store, monkeypatch):
    real = store_mod._write_new

    def write(path, data):
        if data == b"no room\r\n":
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(store_mod, "_write_new", write)
    a, b = domain_box("a.test"), domain_box("b.test")
    results = store.commit_many([Draft("x@o.test", {a: ["u@a.test"]}, b"one\r\n"),
                                 Draft("x@o.test", {a: ["u@a.test"], b: ["v@b.test"]}, b"no room\r\n"),
                                 Draft("x@o.test", {b: ["v@b.test"]}, b"three\r\n")])
    assert isinstance(results[1], OSError) and results[1].errno == 28
    assert [store.read(e) for e in store.list(a)] == [b"one\r\n"]
    assert [store.read(e) for e in store.list(b)] == [b"three\r\n"]
    assert not list((store.root / "tmp").iterdir())


def test_a_batch_syncs_each_box_directory_once_after_its_envelopes_are_in_place(store, monkeypatch):
    synced = []

    def fsync_dir(path):
        synced.append((path.name, sorted(p.name for p in path.glob("*.env"))))

    monkeypatch.setattr(store_mod, "_fsync_dir", fsync_dir)
    a, b = domain_box("a.test"), domain_box("b.test")
    store.commit_many([Draft("x@o.test", {a: ["u@a.test"]}, b"1\r\n"), Draft("x@o.test", {b: ["v@b.test"]}, b"2\r\n"),
                       Draft("x@o.test", {a: ["u@a.test"], b: ["v@b.test"]}, b"3\r\n")])
    # the two new boxes made durable in domains/, then each box once, holding all its envelopes
    assert [name for name, _ in synced] == ["domains", "domains", "a.test", "b.test"]
    assert [len(envs) for _, envs in synced[2:]] == [2, 2]


def test_a_failed_directory_sync_takes_back_only_the_drafts_in_that_box(store, monkeypatch):
    real = store_mod._fsync_dir
    a, b = domain_box("a.test"), domain_box("b.test")
    store.commit("x@o.test", {a: ["u@a.test"], b: ["v@b.test"]}, b"boxes exist\r\n")

    def fsync_dir(path):
        if path.name == "b.test":
            raise OSError(5, "Input/output error")
        return real(path)

    monkeypatch.setattr(store_mod, "_fsync_dir", fsync_dir)
    results = store.commit_many([Draft("x@o.test", {a: ["u@a.test"]}, b"kept\r\n"),
                                 Draft("x@o.test", {a: ["u@a.test"], b: ["v@b.test"]}, b"both\r\n")])
    assert isinstance(results[0], str) and isinstance(results[1], OSError)
    assert [store.read(e) for e in store.list(a)] == [b"boxes exist\r\n", b"kept\r\n"]
    assert [store.read(e) for e in store.list(b)] == [b"boxes exist\r\n"]


def test_a_file_whose_fsync_failed_takes_its_draft_back_alone(store):
    a = domain_box("a.test")
    drafts = [Draft("x@o.test", {a: ["u@a.test"]}, f"{n}\r\n".encode()) for n in range(3)]

    def sync(fds):      # body and envelope of each draft, in order: the second draft's envelope fails
        assert len(fds) == 6
        return [OSError(5, "Input/output error") if i == 3 else None for i in range(len(fds))]

    results = store.commit_many(drafts, sync)
    assert isinstance(results[1], OSError) and all(isinstance(r, str) for r in (results[0], results[2]))
    assert [store.read(e) for e in store.list(a)] == [b"0\r\n", b"2\r\n"]
    assert not list((store.root / "tmp").iterdir())


def test_unqueued_mail_leaves_the_queue_at_once_and_its_body_at_the_sweep(store):
    a = domain_box("a.test")
    ids = [store.commit("x@o.test", {a: ["u@a.test"]}, b"m\r\n") for _ in range(3)]
    assert store.unqueue(a, ids[0]) and store.unqueue(a, ids[1]) and not store.unqueue(a, ids[1])
    assert [e.id for e in store.list(a)] == [ids[2]]
    assert store.body_path(a, ids[0]).exists()          # until the removal is on disk
    store.sweep(a, ids[:2])
    assert sorted(p.name for p in (store.root / "domains" / "a.test").iterdir()) == [f"{ids[2]}.eml", f"{ids[2]}.env"]
