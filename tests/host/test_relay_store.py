"""The relay's queue files: commit, per-recipient update, removal, recovery."""
import os

import pytest

from host_tools.relay import store as store_mod
from host_tools.relay.store import OUTBOX, Store, domain_box


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
