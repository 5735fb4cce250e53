"""The threads that run plain exposed functions when Erlang calls them: started on demand, kept
while the node lives, fed through one queue. A call hands its job over with one queue put and
gets its outcome back with one ``call_soon_threadsafe``, where ``run_in_executor`` plus a task
and ``asyncio.wait`` took a future, a work item and three more loop turns."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("beambridge.node")

Job = Callable[[], None]


class Workers:
    """At most ``limit`` daemon threads; a job waits in the queue while all of them are busy
    (as the loop's default executor would make it wait), so a flood of calls costs queue
    entries, not threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        # Every job in the queue is either promised to a thread (an idle one, or one started
        # for it) or counted in ``_waiting``, which the next thread done with its job takes.
        self._threads = 0
        self._idle = 0  # threads waiting for a job that nobody promised them yet
        self._waiting = 0  # queued jobs no thread was promised
        self._closed = False

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the node is closed")
            start = self._promise()
            if start is None:
                self._waiting += 1
        self._put(job, start)

    def submit_now(self, job: Job) -> bool:
        """Run ``job`` now, on an idle thread or a new one; False (and nothing queued) when
        every thread is busy and no more may start."""
        with self._lock:
            if self._closed:
                return False
            start = self._promise()
            if start is None:
                return False
        self._put(job, start)
        return True

    def _promise(self) -> bool | None:
        """(Lock held.) A thread for one more job: False an idle one, True one to start, None
        when every thread is busy and no more may start."""
        if self._idle:
            self._idle -= 1
            return False
        if self._threads < self.limit:
            self._threads += 1
            return True
        return None

    def _put(self, job: Job, start: bool | None) -> None:
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._run, name="beambridge-call", daemon=True).start()

    def backlog(self) -> bool:
        """Whether jobs wait for a thread."""
        return self._waiting > 0

    def _run(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()  # promised to this thread, or taken from the waiting ones
            if job is None:
                return
            try:
                job()
            except BaseException:  # a job reports its own errors: this only keeps the thread
                log.exception("exposed-function worker")
            with self._lock:
                if self._waiting:
                    self._waiting -= 1
                else:
                    self._idle += 1

    def close(self) -> None:
        """Drop the jobs still queued (the node is gone: nobody takes their results) and stop
        every thread once it is done with its current one (without waiting for it)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            count = self._threads
        with contextlib.suppress(queue.Empty):
            while True:
                self._jobs.get_nowait()
        for _ in range(count):
            self._jobs.put(None)
