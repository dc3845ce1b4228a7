"""A power cut, as the disk sees it: what the relay wrote survives only if
it was fsynced, and a name in a directory only if that directory was
fsynced after the name appeared. The queue's calls go through to the real
file system; beside them a ledger keeps which files' data and which
directory entries are not yet on disk. Every message the relay may say 250
for (commit_many returned its id) must be whole on disk by then, in every
box: its segment's data and name in a domain box, its body and envelope and
their names in the outbox, and a new box's own name. Marks (a delivered
message) are made durable at the sweep."""
import asyncio
import os

import pytest

from host_tools.relay import store as store_mod
from host_tools.relay.groupcommit import GroupCommit
from host_tools.relay.store import Draft, Store, domain_box


class Ledger:
    """Dirty file data (by inode) and dirty directory entries (dir -> names)."""

    def __init__(self, monkeypatch):
        self.dirty_data = set()
        self.dirty_names = {}
        real = {name: getattr(os, name)
                for name in ("open", "write", "pwrite", "pwritev", "fsync", "fdatasync", "link", "replace", "mkdir")}

        def open_(path, flags, mode=0o777, **kw):
            fd = real["open"](path, flags, mode, **kw)
            if flags & os.O_CREAT:
                self.name_changed(path)
            return fd

        def writing(name):
            def write(fd, *args):
                self.dirty_data.add(os.fstat(fd).st_ino)
                return real[name](fd, *args)
            return write

        def syncing(name):
            def sync(fd):
                real[name](fd)
                if os.path.isdir(f"/proc/self/fd/{fd}"):
                    self.dirty_names.pop(os.readlink(f"/proc/self/fd/{fd}"), None)
                else:
                    self.dirty_data.discard(os.fstat(fd).st_ino)
            return sync

        def link(src, dst):
            real["link"](src, dst)
            self.name_changed(dst)

        def replace(src, dst):
            real["replace"](src, dst)
            self.name_changed(src)
            self.name_changed(dst)

        def mkdir(path, mode=0o777, **kw):
            real["mkdir"](path, mode, **kw)
            self.name_changed(path)

        fakes = {"open": open_, "link": link, "replace": replace, "mkdir": mkdir,
                 "write": writing("write"), "pwrite": writing("pwrite"), "pwritev": writing("pwritev"),
                 "fsync": syncing("fsync"), "fdatasync": syncing("fdatasync")}
        for name, fake in fakes.items():
            monkeypatch.setattr(os, name, fake)

    def name_changed(self, path):
        path = os.path.abspath(path)
        self.dirty_names.setdefault(os.path.dirname(path), set()).add(os.path.basename(path))

    def survives(self, path, root):
        """Would `path` be there, whole, after a power cut now? Its data and
        every name from `root` down to it must be on disk."""
        path = os.path.abspath(path)
        if os.stat(path).st_ino in self.dirty_data:
            return False
        while path != os.path.abspath(root):
            if os.path.basename(path) in self.dirty_names.get(os.path.dirname(path), ()):
                return False
            path = os.path.dirname(path)
        return True


def assert_on_disk(store, ledger, drafts, results):
    for draft, id in zip(drafts, results):
        assert isinstance(id, str), id
        for box in draft.rcpts_by_box:
            env = store.envelope(box, id)
            assert env.files
            for path in env.files:
                assert ledger.survives(path, store.root), f"{path} could be lost to a power cut after its 250"


@pytest.fixture(params=["relay", "admin"])
def store(tmp_path, request):
    """The relay's store (it appends to its open segments), or the admin's
    beside it (each commit a segment of its own, renamed into place)."""
    s = Store(tmp_path / "q")
    if request.param == "relay":
        s.lock()
    s.recover()
    return s


def batch():
    a, b = domain_box("a.test"), domain_box("b.test")
    return [Draft("x@o.test", {a: ["u@a.test"]}, b"one\r\n"),
            Draft("x@o.test", {a: ["u@a.test"], b: ["v@b.test"]}, b"two\r\n"),
            Draft("", {store_mod.OUTBOX: ["w@x.test"]}, b"three\r\n")]


def test_a_batch_is_on_disk_when_commit_many_returns(store, monkeypatch):
    ledger = Ledger(monkeypatch)
    drafts = batch()        # a.test and b.test are new boxes: their names in domains/ count too
    assert_on_disk(store, ledger, drafts, store.commit_many(drafts))


def test_the_group_commit_answers_a_session_only_when_its_message_is_on_disk(store, monkeypatch):
    ledger = Ledger(monkeypatch)

    async def session(committer, draft):
        id = await committer.commit(draft.mail_from, draft.rcpts_by_box, draft.data)
        assert_on_disk(store, ledger, [draft], [id])        # the moment its 250 would go out

    async def sessions():
        committer = GroupCommit(store)
        committer.start()
        try:
            await asyncio.gather(*(session(committer, d) for d in batch() * 4))
        finally:
            committer.stop()

    asyncio.run(sessions())


def test_a_single_commit_as_admin_inject_and_bounces_make_it(store, monkeypatch):
    ledger = Ledger(monkeypatch)
    draft = Draft("x@o.test", {domain_box("c.test"): ["u@c.test"]}, b"m\r\n")
    assert_on_disk(store, ledger, [draft], [store.commit(draft.mail_from, draft.rcpts_by_box, draft.data)])


def test_delivered_mail_is_marked_on_disk_at_the_sweep(store, monkeypatch):
    box = domain_box("a.test")
    store.commit_many([Draft("x@o.test", {box: ["u@a.test"]}, b"keep\r\n"),
                       Draft("x@o.test", {box: ["u@a.test"]}, b"delivered\r\n")])
    ledger = Ledger(monkeypatch)
    keep, delivered = store.list(box)
    assert store.unqueue(delivered)
    (path,) = delivered.files
    assert not ledger.survives(path, store.root)        # marked in the page cache only: may come again
    store.sweep(box, [delivered])
    assert ledger.survives(path, store.root) and [e.id for e in store.list(box)] == [keep.id]
