"""The relay's queue on disk.

Layout under the queue directory:
    tmp/                 work in progress; emptied at start-up
    domains/<domain>/    mail held for a customer domain, drained by ATRN:
                         segment files, many messages each (segments.py)
    outbox/              the boxes' outgoing mail and DSNs for outside senders
In the outbox each message is two files with the same id, so that another
program can take them when there is no next hop: <id>.eml (the message, CRLF
lines) and <id>.env (JSON envelope: sender, recipients still pending,
arrival time). The .env is written last, by tmp file + fsync + rename + dir
fsync, so its presence is the commit point. Removal goes the other way: .env
first, then .eml, so a crash leaves at most an orphan body, which recover()
deletes. A message for several domains is a record in each domain's segment.
commit_many() commits a batch with one write and one fsync per domain's
segment and one fsync per outbox directory for all of it (the listeners'
group commit, groupcommit.py)."""
import contextlib
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.relay.config import domain_of
from host_tools.relay.segments import Segments
from host_tools.relay.segments import fsync_dir as _fsync_dir

OUTBOX = "outbox"
log = logging.getLogger("relay")
_ID = re.compile(r"[0-9a-f]{24}")


def domain_box(domain):
    return f"domains/{domain}"


def boxes_for(rcpts):
    """{box: [recipients]}: each recipient in the box of its domain."""
    by_box = {}
    for r in rcpts:
        by_box.setdefault(domain_box(domain_of(r)), []).append(r)
    return by_box


@dataclass
class Draft:
    """A message handed in for commit: for each box, its recipients there."""
    mail_from: str
    rcpts_by_box: dict
    data: bytes
    origin: str = ""
    received: float = None
    id: str = None          # kept from an earlier queue (start-up's move into segments), else a new one


@dataclass
class Envelope:
    id: str
    mail_from: str
    rcpts: list
    received: float
    size: int
    origin: str = ""        # who handed it to us (peer, helo or user), for the Received trail and admin
    box: str = field(default="", compare=False)
    files: tuple = field(default=(), compare=False)     # the files holding it
    where: object = field(default=None, compare=False)  # in a segment: (path, Record, its recipients' indices)

    def fields(self):
        return {"id": self.id, "mail_from": self.mail_from, "rcpts": self.rcpts, "received": self.received,
                "size": self.size, "origin": self.origin}

    def to_json(self):
        return json.dumps(self.fields(), sort_keys=True).encode()


def _segmented(box):
    return box != OUTBOX


class Store:
    MIGRATE_BATCH = 64      # messages read into memory at once when moving an earlier relay's files into a segment

    def __init__(self, root):
        self.root = Path(root)
        self._seq = 0
        self.segments = Segments(self.root, self.new_id)
        # One batch at a time (the committer's and a bounce's from a worker
        # thread), and no segment removed while a batch is written.
        self._lock = threading.Lock()
        self._made = set()      # box directories known to exist

    # -- paths -------------------------------------------------------------------
    def _dir(self, box):
        return self.root / box

    def body_path(self, box, id):
        return self._dir(box) / f"{id}.eml"

    def _env_path(self, box, id):
        return self._dir(box) / f"{id}.env"

    # -- start-up ----------------------------------------------------------------
    def lock(self):
        """Hold the queue for this process (two relays on one queue would drain
        each other's domains at once). The kernel drops the lock when the
        process dies, kill -9 included. The holder is the segments' owner."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.root / ".lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise OSError(f"queue {self.root} is in use by another relay") from None
        self.segments.owner = True

    def prepare(self):
        """Create the directory layout (no clean-up: safe beside a running relay)."""
        for d in ("tmp", "domains", OUTBOX):
            (self.root / d).mkdir(parents=True, exist_ok=True)

    def recover(self):
        """At start-up, under lock(): purge tmp/, delete bodies whose envelope
        never got committed (or was removed), cut each segment after its last
        whole record and remove those with nothing left. Mail that an earlier
        version of the relay queued as files in a domain box moves into a
        segment (same id). Returns (kept, removed). Never while a relay runs
        on this queue: its commits in flight look the same."""
        self.prepare()
        removed = 0
        for f in (self.root / "tmp").iterdir():
            f.unlink()
            removed += 1
        kept = 0
        for box in self.boxes():
            k, r = self._recover_files(box)
            removed += r
            if not _segmented(box):
                kept += k
                continue
            if k:
                self._into_segment(box)
            for path in self.segments.files(box):
                live = self.segments.recover(path, lambda found, box=box: self._requeue(box, found))
                kept += live
                removed += not live
        return kept, removed

    def _requeue(self, box, found):
        """Whole records that start-up found after a damaged one: queued again
        (same id, the recipients still pending) before their bytes are cut off."""
        self._commit_all([Draft(rec.meta["mail_from"], {box: [rec.meta["rcpts"][i] for i in rec.pending]}, body,
                                rec.meta["origin"], rec.meta["received"], rec.meta["id"]) for rec, body in found])

    def _recover_files(self, box):
        d = self._dir(box)
        removed = kept = 0
        envs = {p.stem for p in d.glob("*.env")} | {p.stem for p in d.glob("*.broken")}   # keep set-aside bodies for a human
        for p in d.glob("*.eml"):
            if p.stem not in envs:
                p.unlink()
                removed += 1
        for p in d.glob("*.env"):
            if not p.with_suffix(".eml").exists():
                # An envelope without its body cannot be delivered; keep it aside for a human.
                p.rename(p.with_suffix(".broken"))
                removed += 1
            else:
                kept += 1
        return kept, removed

    def _into_segment(self, box):
        """An earlier relay's files in a domain box, committed into a segment, then removed."""
        envs = self._file_envelopes(box)
        for i in range(0, len(envs), self.MIGRATE_BATCH):
            batch = envs[i:i + self.MIGRATE_BATCH]
            drafts = [Draft(e.mail_from, {box: e.rcpts}, self.body_path(box, e.id).read_bytes(), e.origin, e.received,
                            e.id) for e in batch]
            self._commit_all(drafts)
            for env in batch:
                self._unqueue_file(box, env.id)
            self._sweep_files(box, [e.id for e in batch])

    def boxes(self):
        out = [OUTBOX] if self._dir(OUTBOX).is_dir() else []
        doms = self.root / "domains"
        if doms.is_dir():
            out += sorted(domain_box(d.name) for d in doms.iterdir() if d.is_dir())
        return out

    # -- writing -----------------------------------------------------------------
    def new_id(self):
        # Sortable by arrival: microseconds since the epoch (fixed width hex), then
        # a per-process counter and random bits so two processes never collide.
        self._seq = (self._seq + 1) & 0xFFFF
        return f"{time.time_ns() // 1000:014x}{self._seq:04x}{secrets.token_hex(3)}"

    def commit(self, mail_from, rcpts_by_box, data, origin="", received=None):
        """Durably queue `data` for each box's recipients; returns the id.
        Only after this returns may the caller say 250."""
        (id,) = self._commit_all([Draft(mail_from, rcpts_by_box, data, origin, received)])
        return id

    def _commit_all(self, drafts):
        """commit_many, raising the first OSError: the ids."""
        results = self.commit_many(drafts)
        for result in results:
            if isinstance(result, OSError):
                raise result
        return results

    def commit_many(self, drafts, sync=None):
        """Durably queue each Draft; returns, per draft, its id or the OSError
        that kept it out (nothing of that one is left behind). Every record
        and file of the batch is written first (one write per domain's
        segment), then all are fsynced by `sync` (a list of descriptors in, a
        list of None or OSError out; default one after the other), then the
        outbox's envelopes are renamed into place and each directory that
        got a new name is fsynced once for the whole batch. Only after this
        returns may the caller say 250 for a draft that got an id."""
        staged = [_Staged(d.id or self.new_id(), d) for d in drafts]
        with self._lock:
            segs = []
            try:
                for st in staged:
                    self._write(st)
                segs = self._append(staged)
                self._sync(staged, segs, sync or fsync_each)
                for st in staged:
                    self._place(st)
                for seg in segs:
                    if not seg.error:
                        try:
                            self.segments.place(seg)
                        except OSError as e:
                            _fail(seg, e)
                self._sync_dirs(staged, segs)
                for seg in segs:
                    if not seg.error:
                        self.segments.committed(seg)
            finally:
                for seg in segs:
                    if seg.error:
                        self.segments.failed(seg)
                    self.segments.done_writing(seg)
                for st in staged:
                    st.close()
                    if st.error:
                        self._take_back(st)
        return [st.error or st.id for st in staged]

    def _write(self, st):
        """The draft's outbox part: its body into tmp/, linked into the box, and
        its envelope into tmp/: written, not yet synced or in place."""
        files = {box: rcpts for box, rcpts in st.draft.rcpts_by_box.items() if not _segmented(box)}
        if not files:
            return
        try:
            st.body = self.root / "tmp" / f"{st.id}.eml"
            st.fds.append(_write_new(st.body, st.draft.data))
            for box, rcpts in files.items():
                self._make_box(box)
                os.link(st.body, self.body_path(box, st.id))
                st.boxes.append(box)
                tmp = self.root / "tmp" / f"{st.id}.{secrets.token_hex(4)}.env"
                st.envs.append((tmp, self._env_path(box, st.id)))
                env = Envelope(st.id, st.draft.mail_from, list(rcpts), st.received, len(st.draft.data), st.draft.origin)
                st.fds.append(_write_new(tmp, env.to_json()))
        except OSError as e:
            st.error = e

    def _append(self, staged):
        """Each domain box's records of the batch, in one write to its segment.
        Returns the segments written (each with .drafts, and .error)."""
        by_box = {}
        for st in staged:
            for box, rcpts in st.draft.rcpts_by_box.items():
                if _segmented(box) and not st.error:
                    by_box.setdefault(box, []).append((st, rcpts))
        out = []
        for box, entries in by_box.items():
            meta = [Envelope(st.id, st.draft.mail_from, list(rcpts), st.received, len(st.draft.data),
                             st.draft.origin).fields() for st, rcpts in entries]
            try:
                self._make_box(box)
                seg, placed = self.segments.append(box, list(zip(meta, (st.draft.data for st, _ in entries))))
            except OSError as e:
                for st, _ in entries:
                    st.error = st.error or e
                continue
            seg.error = None
            seg.drafts = [st for st, _ in entries]
            for (st, _), (marks_off, n) in zip(entries, placed):
                st.records.append((seg, marks_off, n))
            out.append(seg)
        return out

    def _sync(self, staged, segs, sync):
        """fsync every file of the batch at once; a failure fails its drafts
        (a segment's, every draft with a record in it)."""
        live = [st for st in staged if not st.error]
        fds = [fd for st in live for fd in st.fds] + [seg.fd for seg in segs]
        errors = iter(sync(fds))
        for st in live:
            st.error = next((e for e in [next(errors) for _ in st.fds] if e), None)
        for seg in segs:
            error = next(errors)
            if error:
                _fail(seg, error)

    def _sync_dirs(self, staged, segs):
        """One fsync per directory that got a name in this batch: the outbox's
        envelopes, a new segment."""
        dirs = {box for st in staged if not st.error for box in st.boxes}
        dirs |= {seg.box for seg in segs if seg.new and not seg.error}
        for box in sorted(dirs):
            try:
                _fsync_dir(self._dir(box))
            except OSError as e:
                for st in staged:
                    if not st.error and box in st.boxes:
                        st.error = e
                for seg in segs:
                    if seg.box == box and seg.new and not seg.error:
                        _fail(seg, e)

    def _place(self, st):
        """Rename the synced outbox envelopes into their boxes: the commit point."""
        try:
            while st.envs and not st.error:
                tmp, final = st.envs[0]
                os.replace(tmp, final)
                st.envs.pop(0)
        except OSError as e:
            st.error = e

    def _take_back(self, st):
        # No 250 will be given, so take back what is already in place: the
        # client's retry must not become a duplicate.
        for box in st.boxes:
            self._env_path(box, st.id).unlink(missing_ok=True)
            self.body_path(box, st.id).unlink(missing_ok=True)
        for seg, marks_off, n in st.records:
            with contextlib.suppress(OSError):      # a segment cut off or never placed holds nothing of it
                self.segments.mark(seg.final, marks_off, range(n))

    def _make_box(self, box):
        """The box's directory; a new one is made durable in its parent, or
        a power cut could take a whole committed domain box with it."""
        if box in self._made:
            return
        d = self._dir(box)
        if not d.is_dir():
            d.mkdir(parents=True, exist_ok=True)
            _fsync_dir(d.parent)
        self._made.add(box)

    def _write_env(self, box, env):
        tmp = self.root / "tmp" / f"{env.id}.{secrets.token_hex(4)}.env"
        _write_synced(tmp, env.to_json())
        os.replace(tmp, self._env_path(box, env.id))
        _fsync_dir(self._dir(box))

    def update(self, env, pending):
        """Keep only `pending` recipients; the message vanishes when none is left."""
        if not pending:
            self.remove(env)
            return
        if env.where:
            path, rec, indices = env.where
            done = [i for i, r in zip(indices, env.rcpts) if r not in pending]
            if done:
                self.segments.mark(path, rec.marks_off, done)
                self.sweep(env.box, [env])
            env.where = (path, rec, [i for i, r in zip(indices, env.rcpts) if r in pending])
            env.rcpts = list(pending)
            return
        env.rcpts = list(pending)
        if self._env_path(env.box, env.id).exists():
            self._write_env(env.box, env)

    def remove(self, env):
        if not self.unqueue(env):
            return False
        self.sweep(env.box, [env])
        return True

    def unqueue(self, env):
        """Take the message out of the queue (marked done, or its envelope
        gone: a relay killed now never sends it again), without waiting for
        the disk; sweep() makes that durable and frees the space. False if
        it was not queued."""
        if env.where:
            path, rec, indices = env.where
            try:
                return self.segments.mark(path, rec.marks_off, indices)
            except FileNotFoundError:
                return False
        return self._unqueue_file(env.box, env.id)

    def _unqueue_file(self, box, id):
        try:
            self._env_path(box, id).unlink()
        except FileNotFoundError:
            return False
        return True

    def sweep(self, box, envs):
        """After unqueue(): the removals made durable, then the space freed:
        in a domain box one sync per segment (the relay then removes a
        segment with nothing left to deliver), in the outbox one directory
        fsync, then the bodies go (a body outlives its envelope on disk,
        never the reverse)."""
        if not _segmented(box):
            self._sweep_files(box, [e.id for e in envs])
            return
        paths = sorted({e.where[0] for e in envs})
        self.segments.sync(paths)
        if self.segments.owner:
            with self._lock:        # not while a batch is being written into one of them
                for path in paths:
                    self.segments.remove_if_done(path)

    def _sweep_files(self, box, ids):
        _fsync_dir(self._dir(box))
        for id in ids:
            self.body_path(box, id).unlink(missing_ok=True)

    # -- reading -----------------------------------------------------------------
    def list(self, box):
        """Envelopes in a box, oldest first."""
        if _segmented(box):
            return sorted(self._segment_envelopes(box), key=lambda e: e.id)
        return self._file_envelopes(box)

    def _file_envelopes(self, box):
        d = self._dir(box)
        if not d.is_dir():
            return []
        out = []
        for p in sorted(d.glob("*.env")):
            env = self._file_envelope(box, p.stem)
            if env:
                out.append(env)
        return out

    def _segment_envelopes(self, box):
        """Every record with a recipient still pending, segment by segment (the
        owner removes a segment it finds with nothing left, unless it is
        appending to it)."""
        for path in self.segments.files(box):
            live = 0
            for rec in self.segments.records(path):
                env = _record_envelope(box, path, rec, rec.pending)
                if env:
                    live += 1
                    yield env
            if not live and self.segments.owner and not self.segments.is_open(path):
                with self._lock:
                    self.segments.remove_if_done(path)

    def envelope(self, box, id):
        """The envelope, or None when there is none."""
        if _segmented(box):
            return next((e for e in self._segment_envelopes(box) if e.id == id), None)
        return self._file_envelope(box, id)

    def current(self, env):
        """`env` as the queue holds it now (its recipients may have been
        delivered or dropped since it was listed), or None once it is gone."""
        if not env.where:
            return self._file_envelope(env.box, env.id)
        path, rec, _ = env.where
        return _record_envelope(env.box, path, rec, self.segments.pending(path, rec))

    def _file_envelope(self, box, id):
        """One that cannot be read (edited by hand, a broken disk) is renamed
        to .broken and logged, so one bad file never blocks a whole box."""
        path = self._env_path(box, id)
        try:
            return Envelope(box=box, files=(self.body_path(box, id), path), **json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:
            path.rename(path.with_suffix(".broken"))
            log.error("queue: %s is unreadable (%s); moved aside as .broken", path, e)
            return None

    def read(self, env):
        """The message's text; None when it is gone (or damaged: logged)."""
        try:
            if env.where:
                path, rec, _ = env.where
                return self.segments.body(path, rec)
            return self.body_path(env.box, env.id).read_bytes()
        except FileNotFoundError:
            return None

    def find(self, id):
        """Every (box, envelope) holding that id (ids from outside are checked, so
        they never name a path)."""
        if not _ID.fullmatch(id):
            return []
        return [(box, e) for box in self.boxes() if (e := self.envelope(box, id))]

    def has_mail(self, box):
        if _segmented(box):
            return any(True for _ in self._segment_envelopes(box))
        d = self._dir(box)
        return d.is_dir() and any(d.glob("*.env"))


def _record_envelope(box, path, rec, indices):
    """The Envelope of a segment's record for those of its recipients; None for none."""
    if not indices:
        return None
    m = rec.meta
    return Envelope(m["id"], m["mail_from"], [m["rcpts"][i] for i in indices], m["received"], m["size"], m["origin"],
                    box, (path,), (path, rec, indices))


def _fail(seg, error):
    """A segment's write, sync or placing failed: so did every draft with a record in it."""
    seg.error = error
    for st in seg.drafts:
        st.error = st.error or error


class _Staged:
    """One draft on its way into its boxes, within a batch."""

    def __init__(self, id, draft):
        self.id = id
        self.draft = draft
        self.received = time.time() if draft.received is None else draft.received
        self.body = None        # tmp/<id>.eml
        self.fds = []           # written, open until the batch ends
        self.envs = []          # (tmp, final) envelopes not yet renamed into place
        self.boxes = []         # outbox boxes the body is linked into
        self.records = []       # (segment, marks offset, recipients): its records in domain boxes
        self.error = None

    def close(self):
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.body:
            self.body.unlink(missing_ok=True)
        for tmp, _ in self.envs:
            tmp.unlink(missing_ok=True)


def _write_new(path, data):
    """A new file holding `data`; its descriptor, still open (not synced)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        os.close(fd)
        raise
    return fd


def _write_synced(path, data):
    fd = _write_new(path, data)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_or_error(fd):
    try:
        os.fsync(fd)
    except OSError as e:
        return e
    return None


def fsync_each(fds):
    return [fsync_or_error(fd) for fd in fds]


