"""The relay's queue on disk.

Layout under the queue directory:
    tmp/                 work in progress; emptied at start-up
    domains/<domain>/    mail held for a customer domain, drained by ATRN
    outbox/              the boxes' outgoing mail and DSNs for outside senders
Each message in a box is two files with the same id: <id>.eml (the message,
CRLF lines) and <id>.env (JSON envelope: sender, recipients still pending,
arrival time). The .env is written last, by tmp file + fsync + rename + dir
fsync, so its presence is the commit point; a message for several domains is
one body hard-linked into each domain box. Removal goes the other way: .env
first, then .eml, so a crash leaves at most an orphan body, which recover()
deletes. commit_many() commits a batch with one fsync per box directory for
all of it (the listeners' group commit, groupcommit.py)."""
import contextlib
import json
import logging
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from host_tools.relay.config import domain_of

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


@dataclass
class Envelope:
    id: str
    mail_from: str
    rcpts: list
    received: float
    size: int
    origin: str = ""        # who handed it to us (peer, helo or user), for the Received trail and admin
    box: str = field(default="", compare=False)

    def to_json(self):
        d = asdict(self)
        del d["box"]
        return json.dumps(d, sort_keys=True).encode()


class Store:
    def __init__(self, root):
        self.root = Path(root)
        self._seq = 0

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
        process dies, kill -9 included."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise OSError(f"queue {self.root} is in use by another relay") from None

    def prepare(self):
        """Create the directory layout (no clean-up: safe beside a running relay)."""
        for d in ("tmp", "domains", OUTBOX):
            (self.root / d).mkdir(parents=True, exist_ok=True)

    def recover(self):
        """At start-up, under lock(): purge tmp/, delete bodies whose envelope
        never got committed (or was removed). Returns (kept, removed). Never
        while a relay runs on this queue: its commits in flight look the same."""
        self.prepare()
        removed = 0
        for f in (self.root / "tmp").iterdir():
            f.unlink()
            removed += 1
        kept = 0
        for box in self.boxes():
            d = self._dir(box)
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
        (result,) = self.commit_many([Draft(mail_from, rcpts_by_box, data, origin, received)])
        if isinstance(result, OSError):
            raise result
        return result

    def commit_many(self, drafts, sync=None):
        """Durably queue each Draft; returns, per draft, its id or the OSError
        that kept it out (nothing of that one is left behind). Every file of
        the batch is written first, then all are fsynced by `sync` (a list
        of descriptors in, a list of None or OSError out; default one after
        the other), then the envelopes are renamed into place and each box
        directory is fsynced once for the whole batch. Only after this
        returns may the caller say 250 for a draft that got an id."""
        staged = [_Staged(self.new_id(), d) for d in drafts]
        try:
            for st in staged:
                self._write(st)
            live = [st for st in staged if not st.error]
            errors = iter((sync or fsync_each)([fd for st in live for fd in st.fds]))
            for st in live:
                st.error = next((e for e in [next(errors) for _ in st.fds] if e), None)
            for st in staged:
                self._place(st)
            for box in sorted({box for st in staged if not st.error for box in st.boxes}):
                try:
                    _fsync_dir(self._dir(box))
                except OSError as e:
                    for st in staged:
                        if not st.error and box in st.boxes:
                            st.error = e
        finally:
            for st in staged:
                st.close()
                if st.error:
                    self._take_back(st.id, st.boxes)
        return [st.error or st.id for st in staged]

    def _write(self, st):
        """The draft's body into tmp/, linked into each box, and its envelopes
        into tmp/: written, not yet synced or in place."""
        received = time.time() if st.draft.received is None else st.draft.received
        try:
            st.body = self.root / "tmp" / f"{st.id}.eml"
            st.fds.append(_write_new(st.body, st.draft.data))
            for box, rcpts in st.draft.rcpts_by_box.items():
                self._make_box(box)
                os.link(st.body, self.body_path(box, st.id))
                st.boxes.append(box)
                tmp = self.root / "tmp" / f"{st.id}.{secrets.token_hex(4)}.env"
                st.envs.append((tmp, self._env_path(box, st.id)))
                env = Envelope(st.id, st.draft.mail_from, list(rcpts), received, len(st.draft.data), st.draft.origin)
                st.fds.append(_write_new(tmp, env.to_json()))
        except OSError as e:
            st.error = e

    def _place(self, st):
        """Rename the synced envelopes into their boxes: the commit point."""
        try:
            while st.envs and not st.error:
                tmp, final = st.envs[0]
                os.replace(tmp, final)
                st.envs.pop(0)
        except OSError as e:
            st.error = e

    def _take_back(self, id, boxes):
        # No 250 will be given, so take back what is already in place: the
        # client's retry must not become a duplicate.
        for box in boxes:
            self._env_path(box, id).unlink(missing_ok=True)
            self.body_path(box, id).unlink(missing_ok=True)

    def _make_box(self, box):
        """The box's directory; a new one is made durable in its parent, or
        a power cut could take a whole committed domain box with it."""
        d = self._dir(box)
        if not d.is_dir():
            d.mkdir(parents=True, exist_ok=True)
            _fsync_dir(d.parent)

    def _write_env(self, box, env):
        tmp = self.root / "tmp" / f"{env.id}.{secrets.token_hex(4)}.env"
        _write_synced(tmp, env.to_json())
        os.replace(tmp, self._env_path(box, env.id))
        _fsync_dir(self._dir(box))

    def update(self, env, pending):
        """Keep only `pending` recipients; the message vanishes when none is left."""
        if pending:
            env.rcpts = list(pending)
            if self._env_path(env.box, env.id).exists():
                self._write_env(env.box, env)
        else:
            self.remove(env.box, env.id)

    def remove(self, box, id):
        if not self.unqueue(box, id):
            return False
        self.sweep(box, [id])
        return True

    def unqueue(self, box, id):
        """Take the message out of the queue (its envelope goes; a relay
        killed now never sends it again), without waiting for the disk;
        sweep() makes that durable and deletes the body. False if it was
        not queued."""
        try:
            self._env_path(box, id).unlink()
        except FileNotFoundError:
            return False
        return True

    def sweep(self, box, ids):
        """After unqueue(): one directory fsync for all of `ids`, then their
        bodies go (a body outlives its envelope on disk, never the reverse)."""
        _fsync_dir(self._dir(box))
        for id in ids:
            self.body_path(box, id).unlink(missing_ok=True)

    # -- reading -----------------------------------------------------------------
    def list(self, box):
        """Envelopes in a box, oldest first."""
        d = self._dir(box)
        if not d.is_dir():
            return []
        out = []
        for p in sorted(d.glob("*.env")):
            env = self.envelope(box, p.stem)
            if env:
                out.append(env)
        return out

    def envelope(self, box, id):
        """The envelope, or None when there is none. One that cannot be read
        (edited by hand, a broken disk) is renamed to .broken and logged, so
        one bad file never blocks a whole domain."""
        path = self._env_path(box, id)
        try:
            return Envelope(box=box, **json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:
            path.rename(path.with_suffix(".broken"))
            log.error("queue: %s is unreadable (%s); moved aside as .broken", path, e)
            return None

    def read(self, env):
        return self.body_path(env.box, env.id).read_bytes()

    def find(self, id):
        """Every (box, envelope) holding that id (ids from outside are checked, so
        they never name a path)."""
        if not _ID.fullmatch(id):
            return []
        return [(box, e) for box in self.boxes() if (e := self.envelope(box, id))]

    def has_mail(self, box):
        d = self._dir(box)
        return d.is_dir() and any(d.glob("*.env"))


class _Staged:
    """One draft on its way into its boxes, within a batch."""

    def __init__(self, id, draft):
        self.id = id
        self.draft = draft
        self.body = None        # tmp/<id>.eml
        self.fds = []           # written, open until the batch ends
        self.envs = []          # (tmp, final) envelopes not yet renamed into place
        self.boxes = []         # boxes the body is linked into
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


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
