"""The relay's queue on disk: segments per domain box (segments.py), the
outbox's files, commit, per-recipient update, removal, recovery."""
import json
import os

import pytest

from host_tools.relay import segments as segments_mod
from host_tools.relay import store as store_mod
from host_tools.relay.store import OUTBOX, Draft, Store, domain_box

A, B = domain_box("a.test"), domain_box("b.test")


@pytest.fixture
def store(tmp_path):
    """The relay's own store: it holds the queue's lock."""
    s = Store(tmp_path / "q")
    s.lock()
    s.recover()
    return s


def segment_files(store, box):
    return sorted(p.name for p in (store.root / box).iterdir() if p.suffix == ".seg")


def restarted(store):
    """The store as the next relay finds it: the lock given up, recovered."""
    store._lock_file.close()
    again = Store(store.root)
    again.lock()
    again.recover()
    return again


def test_a_message_is_a_record_in_each_domain_box_and_files_in_the_outbox(store):
    data = b"Subject: hi\r\n\r\nbody\r\n"
    id = store.commit("x@o.test", {A: ["u@a.test"], B: ["v@b.test", "w@b.test"], OUTBOX: ["z@x.test"]}, data)
    a, b = store.list(A), store.list(B)
    assert [e.rcpts for e in a] == [["u@a.test"]] and [e.rcpts for e in b] == [["v@b.test", "w@b.test"]]
    assert [e.id for e in a + b + store.list(OUTBOX)] == [id] * 3
    assert len(segment_files(store, A)) == len(segment_files(store, B)) == 1
    assert sorted(p.name for p in (store.root / OUTBOX).iterdir()) == [f"{id}.eml", f"{id}.env"]
    assert not list((store.root / "tmp").iterdir())
    store.update(b[0], ["w@b.test"])
    assert store.envelope(B, id).rcpts == ["w@b.test"]
    store.update(store.envelope(B, id), [])
    assert store.list(B) == [] and segment_files(store, B) == []     # nothing left to deliver: the segment goes
    assert store.read(store.envelope(A, id)) == data


def test_a_batch_appends_to_one_segment_per_box_and_new_mail_goes_on_after_it(store):
    ids = [store.commit("x@o.test", {A: ["u@a.test"]}, f"m{n}\r\n".encode()) for n in range(5)]
    assert len(segment_files(store, A)) == 1
    assert [e.id for e in store.list(A)] == ids == sorted(ids)
    assert [store.read(e) for e in store.list(A)] == [f"m{n}\r\n".encode() for n in range(5)]


def test_ids_sort_by_arrival_and_never_name_a_path(store):
    ids = [store.commit("", {OUTBOX: ["r@x.test"]}, b"m\r\n") for _ in range(20)]
    assert [e.id for e in store.list(OUTBOX)] == ids == sorted(ids)
    assert store.find(ids[0])[0][0] == OUTBOX
    assert store.find("../../etc/passwd") == [] and store.find(ids[0].upper()) == []


def test_marks_survive_a_restart_and_delivered_mail_never_comes_back(store):
    ids = [store.commit("x@o.test", {A: ["u@a.test", "v@a.test"]}, f"m{n}\r\n".encode()) for n in range(3)]
    first, second, _ = store.list(A)
    store.update(first, ["v@a.test"])           # u got it, v is deferred
    assert store.unqueue(second) and not store.unqueue(second)
    store.sweep(A, [second])
    again = restarted(store)
    assert [(e.id, e.rcpts) for e in again.list(A)] == [(ids[0], ["v@a.test"]), (ids[2], ["u@a.test", "v@a.test"])]


def test_an_envelope_read_again_has_what_the_disk_has_now(store):
    ids = [store.commit("x@o.test", {A: ["u@a.test", "v@a.test"]}, b"m\r\n") for _ in range(2)]
    first, second = store.list(A)
    admin = Store(store.root)
    admin.update(admin.envelope(A, ids[0]), ["v@a.test"])
    admin.remove(admin.envelope(A, ids[1]))
    assert store.current(first).rcpts == ["v@a.test"] and store.current(second) is None
    out = store.commit("x@o.test", {OUTBOX: ["z@x.test"]}, b"m\r\n")
    (queued,) = store.list(OUTBOX)
    admin.remove(admin.envelope(OUTBOX, out))
    assert store.current(queued) is None


def test_recover_removes_leftovers_and_keeps_committed_mail(store):
    id = store.commit("x@o.test", {A: ["u@a.test"]}, b"m\r\n")
    out = store.root / OUTBOX
    (store.root / "tmp" / "half.seg").write_bytes(b"partial")
    (out / "0000000000000000deadbeef.eml").write_bytes(b"orphan body")      # its .env never landed
    (out / "0000000000000001deadbeef.env").write_bytes(b"{}")                # a body lost by hand
    done = store.commit("x@o.test", {B: ["v@b.test"]}, b"delivered\r\n")
    store.unqueue(store.envelope(B, done))      # delivered, but the relay died before its sweep
    again = restarted(store)
    assert again.recover() == (1, 0)
    assert [e.id for e in again.list(A)] == [id] and segment_files(again, B) == []
    assert (out / "0000000000000001deadbeef.broken").exists()


def test_mail_an_earlier_relay_queued_as_files_moves_into_a_segment_with_its_id(store):
    d = store.root / A
    d.mkdir(parents=True)
    old = "0661000000000000000000aa"
    env = {"id": old, "mail_from": "x@o.test", "rcpts": ["u@a.test"], "received": 1.0e9, "size": 5, "origin": "smtp"}
    (d / f"{old}.eml").write_bytes(b"old\r\n")
    (d / f"{old}.env").write_text(json.dumps(env))
    (d / "0661000000000000000000bb.eml").write_bytes(b"orphan")
    again = restarted(store)
    (moved,) = again.list(A)
    assert (moved.id, moved.rcpts, moved.received, again.read(moved)) == (old, ["u@a.test"], 1.0e9, b"old\r\n")
    assert [p.suffix for p in d.iterdir()] == [".seg"]


@pytest.mark.parametrize("damage", ["cut in the body", "cut in the head", "body bytes changed", "meta bytes changed"])
def test_a_torn_last_record_is_cut_off_at_start_up_and_the_segment_goes_on(store, damage):
    ids = [store.commit("x@o.test", {A: ["u@a.test"]}, f"message {n}\r\n".encode() * 50) for n in range(3)]
    (seg,) = (store.root / A).glob("*.seg")
    last = store.list(A)[-1].where[1]
    raw = bytearray(seg.read_bytes())
    start = raw.rindex(segments_mod.MAGIC)
    if damage == "cut in the body":
        del raw[last.body_off + 100:]
    elif damage == "cut in the head":
        del raw[start + 10:]
    elif damage == "body bytes changed":
        raw[last.body_off + 7] ^= 0x20
    else:
        raw[start + segments_mod.HEAD.size + 3] ^= 0x20
    seg.write_bytes(raw)
    again = restarted(store)
    assert [e.id for e in again.list(A)] == ids[:2]
    assert seg.stat().st_size == start                      # cut right after the last whole record
    (aside,) = (store.root / A).glob("*.broken")            # the cut bytes, for a human
    assert aside.read_bytes() == bytes(raw[start:])
    later = again.commit("x@o.test", {A: ["u@a.test"]}, b"after\r\n")
    assert [e.id for e in again.list(A)] == ids[:2] + [later]
    assert [e.id for e in restarted(again).list(A)] == ids[:2] + [later]


def test_whole_records_after_a_damaged_one_are_queued_again_at_start_up(store, caplog):
    ids = [store.commit("x@o.test", {A: ["u@a.test", "v@a.test"]}, f"message {n}\r\n".encode() * 50) for n in range(4)]
    envs = store.list(A)
    store.update(envs[3], ["v@a.test"])         # u has the last one already
    (seg,) = (store.root / A).glob("*.seg")
    raw = bytearray(seg.read_bytes())
    second = envs[1].where[1]
    raw[second.body_off:second.body_off + 512] = bytes(512)      # a block the disk lost
    seg.write_bytes(raw)
    again = restarted(store)
    assert [(e.id, e.rcpts) for e in again.list(A)] == \
        [(ids[0], ["u@a.test", "v@a.test"]), (ids[2], ["u@a.test", "v@a.test"]), (ids[3], ["v@a.test"])]
    assert [again.read(e) for e in again.list(A)] == [f"message {n}\r\n".encode() * 50 for n in (0, 2, 3)]
    assert "2 whole message(s) found in them queued again" in caplog.text
    (aside,) = (store.root / A).glob("*.broken")
    assert aside.read_bytes() == bytes(raw[raw.rindex(segments_mod.MAGIC, 0, second.marks_off):])


def test_a_record_damaged_after_start_up_is_skipped_logged_and_kept(store, caplog):
    store.commit("x@o.test", {A: ["u@a.test"]}, b"fine\r\n")
    store.commit("x@o.test", {A: ["u@a.test"]}, b"will rot\r\n")
    (seg,) = (store.root / A).glob("*.seg")
    bad = store.list(A)[1]
    with open(seg, "r+b") as f:
        f.seek(bad.where[1].body_off)
        f.write(b"W")
    assert store.read(bad) is None
    assert "damaged" in caplog.text
    assert [store.read(e) for e in store.list(A)] == [b"fine\r\n", None]


def test_a_failed_write_leaves_nothing_behind(store, monkeypatch):
    real = os.pwritev

    def pwritev(fd, buffers, offset):
        if b"for b\r\n" in buffers:
            raise OSError(28, "No space left on device")
        return real(fd, buffers, offset)

    monkeypatch.setattr(segments_mod.os, "pwritev", pwritev)
    with pytest.raises(OSError):
        store.commit("x@o.test", {A: ["u@a.test"], B: ["v@b.test"], OUTBOX: ["z@x.test"]}, b"for b\r\n")
    assert store.list(A) == store.list(B) == store.list(OUTBOX) == []
    assert not list((store.root / "tmp").iterdir()) and not list((store.root / OUTBOX).iterdir())
    assert all(p.stat().st_size == 0 for p in (store.root / "domains").rglob("*.seg"))
    monkeypatch.undo()
    id = store.commit("x@o.test", {B: ["v@b.test"]}, b"room again\r\n")
    assert [e.id for e in store.list(B)] == [id]


def test_an_unreadable_outbox_envelope_is_set_aside_and_the_rest_still_lists(store):
    ids = [store.commit("x@o.test", {OUTBOX: ["u@x.test"]}, b"m\r\n") for _ in range(3)]
    bad = store.root / OUTBOX / f"{ids[1]}.env"
    bad.write_text("{not json")
    assert [e.id for e in store.list(OUTBOX)] == [ids[0], ids[2]]
    assert bad.with_suffix(".broken").exists()
    restarted(store)
    assert bad.with_suffix(".eml").exists()      # its body stays for a human to look at


def test_a_batch_whose_write_fails_in_one_box_keeps_the_drafts_elsewhere(store, monkeypatch):
    real = os.pwritev

    def pwritev(fd, buffers, offset):
        if b"no room\r\n" in buffers:
            raise OSError(28, "No space left on device")
        return real(fd, buffers, offset)

    monkeypatch.setattr(segments_mod.os, "pwritev", pwritev)
    results = store.commit_many([Draft("x@o.test", {A: ["u@a.test"]}, b"one\r\n"),
                                 Draft("x@o.test", {A: ["u@a.test"], OUTBOX: ["z@x.test"]}, b"two\r\n"),
                                 Draft("x@o.test", {B: ["v@b.test"]}, b"no room\r\n"),
                                 Draft("x@o.test", {B: ["v@b.test"], A: ["u@a.test"]}, b"four\r\n")])
    # b.test's one write held drafts 3 and 4: both fail, and 4's record in a.test is taken back
    assert isinstance(results[2], OSError) and results[2].errno == 28 and isinstance(results[3], OSError)
    assert [store.read(e) for e in store.list(A)] == [b"one\r\n", b"two\r\n"]
    assert store.list(B) == [] and [store.read(e) for e in store.list(OUTBOX)] == [b"two\r\n"]
    assert not list((store.root / "tmp").iterdir())


def test_a_batch_syncs_a_directory_only_for_a_new_name(store, monkeypatch):
    synced = []
    monkeypatch.setattr(store_mod, "_fsync_dir", lambda path: synced.append(path.name))
    store.commit_many([Draft("x@o.test", {A: ["u@a.test"]}, b"1\r\n"), Draft("x@o.test", {B: ["v@b.test"]}, b"2\r\n"),
                       Draft("x@o.test", {A: ["u@a.test"], B: ["v@b.test"]}, b"3\r\n")])
    # the two new boxes made durable in domains/, then each box once, for its new segment
    assert synced == ["domains", "domains", "a.test", "b.test"]
    synced.clear()
    store.commit_many([Draft("x@o.test", {A: ["u@a.test"], OUTBOX: ["z@x.test"]}, b"4\r\n"),
                       Draft("x@o.test", {B: ["v@b.test"]}, b"5\r\n")])
    assert synced == ["outbox"]         # appended to the open segments: no new name in a domain box


def test_a_failed_directory_sync_takes_back_only_the_drafts_in_that_box(store, monkeypatch):
    real = store_mod._fsync_dir

    def fsync_dir(path):
        if path.name == "b.test":
            raise OSError(5, "Input/output error")
        return real(path)

    monkeypatch.setattr(store_mod, "_fsync_dir", fsync_dir)
    results = store.commit_many([Draft("x@o.test", {A: ["u@a.test"]}, b"kept\r\n"),
                                 Draft("x@o.test", {A: ["u@a.test"], B: ["v@b.test"]}, b"both\r\n")])
    assert isinstance(results[0], str) and isinstance(results[1], OSError)
    assert [store.read(e) for e in store.list(A)] == [b"kept\r\n"]
    assert store.list(B) == []
    monkeypatch.undo()
    assert [e.id for e in restarted(store).list(A)] == [results[0]]


def test_a_segment_whose_fsync_failed_takes_back_its_drafts_and_is_written_no_more(store):
    drafts = [Draft("x@o.test", {A: ["u@a.test"]}, b"0\r\n"), Draft("x@o.test", {B: ["v@b.test"]}, b"1\r\n"),
              Draft("x@o.test", {OUTBOX: ["z@x.test"]}, b"2\r\n")]

    def sync(fds):      # the outbox's body and envelope, then a.test's segment, then b.test's: b.test's fails
        assert len(fds) == 4
        return [OSError(5, "Input/output error") if i == 3 else None for i in range(len(fds))]

    results = store.commit_many(drafts, sync)
    assert isinstance(results[1], OSError) and all(isinstance(r, str) for r in (results[0], results[2]))
    assert store.list(B) == [] and [store.read(e) for e in store.list(A)] == [b"0\r\n"]
    failed = segment_files(store, B)
    later = store.commit("x@o.test", {B: ["v@b.test"]}, b"later\r\n")
    assert [e.id for e in store.list(B)] == [later] and segment_files(store, B) != failed


def test_records_in_flight_are_not_seen_by_the_relay_until_synced(store):
    store.commit("x@o.test", {A: ["u@a.test"]}, b"first\r\n")
    seen = []

    def sync(fds):
        seen.append([store.read(e) for e in store.list(A)])
        return [None] * len(fds)

    store.commit_many([Draft("x@o.test", {A: ["u@a.test"]}, b"second\r\n")], sync)
    assert seen == [[b"first\r\n"]]
    assert [store.read(e) for e in store.list(A)] == [b"first\r\n", b"second\r\n"]


def test_unqueued_mail_leaves_the_queue_at_once_and_its_segment_at_the_sweep(store):
    ids = [store.commit("x@o.test", {A: ["u@a.test"]}, b"m\r\n") for _ in range(3)]
    envs = store.list(A)
    assert store.unqueue(envs[0]) and store.unqueue(envs[1]) and not store.unqueue(envs[1])
    assert [e.id for e in store.list(A)] == [ids[2]]
    store.sweep(A, envs[:2])
    assert len(segment_files(store, A)) == 1         # one message still in it
    store.unqueue(envs[2])
    store.sweep(A, envs[2:])
    assert list((store.root / A).iterdir()) == []
    later = store.commit("x@o.test", {A: ["u@a.test"]}, b"new segment\r\n")
    assert [e.id for e in store.list(A)] == [later] and len(segment_files(store, A)) == 1


def test_a_full_segment_is_closed_and_the_next_batch_starts_another(store, monkeypatch):
    monkeypatch.setattr(segments_mod.Segments, "SEGMENT_MAX", 3000)
    ids = [store.commit("x@o.test", {A: ["u@a.test"]}, b"x" * 1000 + b"\r\n") for _ in range(6)]
    assert len(segment_files(store, A)) == 2
    assert [e.id for e in store.list(A)] == ids
    envs = store.list(A)
    for e in envs[:3]:
        store.unqueue(e)
    store.sweep(A, envs[:3])
    assert len(segment_files(store, A)) == 1         # the first, closed and done with, is gone


def test_the_admin_beside_the_relay_adds_segments_of_its_own_and_only_marks(store):
    relays = store.commit("x@o.test", {A: ["u@a.test"]}, b"by the relay\r\n")
    admin = Store(store.root)       # another process: not the lock's holder
    injected = admin.commit("x@o.test", {A: ["u@a.test"]}, b"injected\r\n")
    assert len(segment_files(store, A)) == 2         # never appended to the relay's open segment
    assert [e.id for e in store.list(A)] == [relays, injected] == [e.id for e in admin.list(A)]
    for box, env in admin.find(injected):
        assert admin.remove(env)
    assert len(segment_files(store, A)) == 2         # marked, not removed: only the relay removes segments
    assert [e.id for e in store.list(A)] == [relays]
    assert len(segment_files(store, A)) == 1         # the relay, listing, removed it
    later = store.commit("x@o.test", {A: ["u@a.test"]}, b"after\r\n")
    assert [e.id for e in admin.list(A)] == [relays, later]


def test_a_queue_of_many_segments_keeps_few_descriptors_open(store, monkeypatch):
    monkeypatch.setattr(segments_mod.Segments, "SEGMENT_MAX", 1)      # every batch closes its segment
    monkeypatch.setattr(segments_mod.Segments, "CACHED_FDS", 3)
    before = len(os.listdir("/proc/self/fd"))
    ids = [store.commit("x@o.test", {A: ["u@a.test"]}, f"m{n}\r\n".encode()) for n in range(12)]
    envs = store.list(A)
    assert [store.read(e) for e in envs] == [f"m{n}\r\n".encode() for n in range(12)]
    assert all(store.unqueue(e) for e in envs[:6])
    store.sweep(A, envs[:6])
    assert [e.id for e in store.list(A)] == ids[6:] and len(segment_files(store, A)) == 6
    assert len(os.listdir("/proc/self/fd")) - before <= 3
