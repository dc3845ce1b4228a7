"""Group commit for the relay's listeners: every session's message goes to
one committer thread, which takes all that are waiting and commits them as
one batch (Store.commit_many: one write and one fsync per domain's segment
for the batch). While it syncs one batch the next one gathers, so
concurrent sessions share the fsyncs and nobody waits for a timer. A
batch's several files (more than one domain, the outbox's) are fsynced all
at once, from a few threads that do nothing else, so a batch costs about
one fsync's wait, not one per file. The Python work is
all in the one committer thread: the event loop trades the GIL with it
rather than with a pool of busy workers, and a message costs a handful of
thread switches instead of dozens.

A session awaits its own result; the 250 is said only after the batch that
held its message is on disk. A session cancelled meanwhile (line lost,
shutdown) gives no 250, but its message may still land: at-least-once."""
import asyncio
import errno
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from host_tools.relay.store import Draft, fsync_or_error

log = logging.getLogger("relay")


class GroupCommit:
    MAX_BATCH = 64      # messages per batch: bounds how long one batch keeps the next one waiting
    SYNC_THREADS = 8    # fsyncs in flight at once

    def __init__(self, store):
        self.store = store
        self._waiting = []          # (Draft, future)
        self._wake = threading.Condition()
        self._stopping = False
        self._loop = None
        self._syncers = None        # the threads that run a batch's fsyncs
        self._thread = None

    def start(self):
        self._loop = asyncio.get_running_loop()
        self._syncers = ThreadPoolExecutor(self.SYNC_THREADS, thread_name_prefix="fsync")
        self._thread = threading.Thread(target=self._run, name="groupcommit", daemon=True)
        self._thread.start()

    async def commit(self, mail_from, rcpts_by_box, data, origin=""):
        """Store.commit for a coroutine: the id once the message is durable."""
        future = self._loop.create_future()
        with self._wake:
            if self._stopping:
                raise OSError(errno.ECANCELED, "the relay is stopping")
            self._waiting.append((Draft(mail_from, rcpts_by_box, data, origin), future))
            self._wake.notify()
        return await future

    def stop(self):
        """Commit what is waiting, then end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread:
            self._thread.join()
            self._syncers.shutdown()

    def _run(self):
        while True:
            with self._wake:
                while not self._waiting and not self._stopping:
                    self._wake.wait()
                if not self._waiting:
                    return
                batch, self._waiting = self._waiting[:self.MAX_BATCH], self._waiting[self.MAX_BATCH:]
            try:
                results = self.store.commit_many([draft for draft, _ in batch], self._sync)
            except Exception as e:      # a bug, not a disk error: fail this batch, but never leave sessions waiting
                log.exception("queue: commit failed")
                results = [e] * len(batch)
            self._loop.call_soon_threadsafe(_settle, batch, results)

    def _sync(self, fds):
        if len(fds) == 1:
            return [fsync_or_error(fds[0])]     # one domain's segment, the usual batch: no thread hop
        return list(self._syncers.map(fsync_or_error, fds))


def _settle(batch, results):
    for (_, future), result in zip(batch, results):
        if future.done():
            continue        # its session was cancelled meanwhile
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)
