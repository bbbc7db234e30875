"""Forward passes go through one scheduler per backend: members in parallel, sequences batched.

Every pass a decoding owes is *submitted* to its member's scheduler, which runs it on
the scheduler's own worker thread; the decoding then waits for all the passes it
owes at this step at once (`gather`). Two consequences, with no change to the
decoding logic itself:

- the members of one round run at the same time (one worker per member; torch
  releases the GIL inside its kernels), so a round costs about its slowest member;
- passes submitted by many decodings at once (`Ensemble.generate_batch`, LangChain's
  `batch`, an exact-mode beam's paths owed at one byte) leave the queue together as
  one `backend.next_logits_batch` call: one batched forward.

When to run what is queued: as soon as every decoding that uses this backend is
blocked waiting for passes that are all still queued (nobody can add to any batch
before something runs, and nobody is about to be woken by a batch already running),
when the queue holds `max_batch` passes, or `linger_s` after the first pass arrived
(a decoding busy elsewhere, e.g. in a long search, delays the others by at most
that). A lone decoding never waits. Subtle: a decoding blocked on a pass that
another member's worker is *running* counts as about to submit: running without it
would split the batch and leave the decodings half a step apart from then on.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

DEFAULT_MAX_BATCH = 16
DEFAULT_LINGER_S = 1.0  # a safety net only: decodings normally block (or submit) well before
IDLE_EXIT_S = 2.0  # a worker with nothing to do for this long ends; the next pass starts a new one
EXIT_WAIT_S = 120.0  # at interpreter exit, how long a running batch may take to finish


class Client:
    """One decoding that submits passes, as the schedulers see it.

    `holds` > 0: registered (the schedulers wait for it). `outstanding`: its passes not
    answered yet. `blocked`: it waits in `gather` and none of its passes has been
    answered since (subtle: cleared only when the *last* outstanding pass is answered;
    a client answered for one member while its pass at the other is still queued is
    still blocked, and counting it as awake would make each scheduler wait for it).
    """

    def __init__(self, schedulers: Iterable["PassScheduler"] = ()) -> None:
        self.blocked = False
        self.running = 0  # its passes inside a batch being run right now
        self.outstanding = 0
        self.holds = 0
        self.schedulers: list[PassScheduler] = list({id(s): s for s in schedulers}.values())
        self._lock = threading.Lock()  # the members' workers update these at once

    @property
    def idle(self) -> bool:
        """Blocked, and not about to be woken by a running batch."""
        return self.blocked and self.running == 0

    def submitted(self) -> None:
        with self._lock:
            self.outstanding += 1

    def started(self) -> None:
        with self._lock:
            self.running += 1

    def answered(self) -> None:
        """One pass of it ran (called after its future is set)."""
        with self._lock:
            self.running -= 1
            self.outstanding -= 1
            if self.outstanding <= 0:
                self.blocked = False
        self.poke()

    def poke(self) -> None:
        for scheduler in self.schedulers:
            scheduler._blocked_changed()

    def register(self) -> None:
        """The schedulers wait for this decoding until a matching unregister (holds nest)."""
        with self._lock:
            self.holds += 1
            first = self.holds == 1
        if first:
            for scheduler in self.schedulers:
                scheduler._register(self)

    def unregister(self) -> None:
        with self._lock:
            self.holds -= 1
            last = self.holds == 0
        if last:
            for scheduler in self.schedulers:
                scheduler._unregister(self)


@dataclass
class _Request:
    runner: Any
    ids: list[int]
    finish: Callable[[Any], Any]  # turns the logits into the result (runs on the worker)
    future: Future
    owner: Client | None = None
    eager: bool = True  # False: a pass queued ahead (exact scoring); it waits to join a batch the owner needs


_current = threading.local()


@contextlib.contextmanager
def bound(me: Client) -> Iterator[Client]:
    """The calling thread's passes belong to `me` for the duration (and `me` is registered).

    Subtle: enter it around work that does not yield to a caller. A binding held across
    a generator's `yield` would follow the thread, not the generator: a suspended stream
    would keep the schedulers waiting for it, and two streams stepped in one thread, or
    one stream stepped from several threads, would charge passes to the wrong decoding.
    """
    previous = getattr(_current, "client", None)
    _current.client = me
    me.register()
    try:
        yield me
    finally:
        _current.client = previous
        me.unregister()


class PassScheduler:
    """The single worker that runs one backend's forward passes, batching what arrives together."""

    def __init__(self, backend: Any, max_batch: int = DEFAULT_MAX_BATCH, linger_s: float = DEFAULT_LINGER_S):
        self.backend = backend
        self.max_batch = max_batch
        self.linger_s = linger_s
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._first_arrival = 0.0
        self._clients: set[Client] = set()
        self._worker: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # batched calls made (for stats and benchmarks)
        self.passes = 0
        _LIVE.add(self)

    # --- clients ------------------------------------------------------------------

    def _register(self, me: Client) -> None:
        with self._cond:
            self._clients.add(me)

    def _unregister(self, me: Client) -> None:
        with self._cond:
            self._clients.discard(me)
            self._cond.notify_all()

    def _blocked_changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def submit(self, runner: Any, ids: Sequence[int], finish: Callable[[Any], Any], eager: bool = True) -> Future:
        """Queue one pass. eager=False: a pass queued ahead of need; it does not make its owner count
        as waiting for this batch, so it runs with the next pass the owner does wait for (or on
        linger_s / max_batch). A caller that no longer needs it cancels its future: never run."""
        future: Future = Future()
        owner = getattr(_current, "client", None)
        with self._cond:
            if self._closed:  # under the lock: nothing joins the queue after close() emptied it
                future.set_exception(RuntimeError("the interpreter is exiting: no more forward passes run"))
                return future
            if owner is not None:
                owner.submitted()
            if not self._queue:
                self._first_arrival = time.monotonic()
            self._queue.append(_Request(runner, list(ids), finish, future, owner, eager))
            self._ensure_worker()
            self._cond.notify_all()
        return future

    def withdraw(self, futures: Iterable[Future]) -> None:
        """Cancel passes not needed any more (queued ahead, never owed): those still queued never run."""
        wanted = {id(f) for f in futures if f.cancel()}
        with self._cond:
            gone = [r for r in self._queue if id(r.future) in wanted]
            self._queue = [r for r in self._queue if id(r.future) not in wanted]
            for request in gone:
                if request.owner is not None:
                    request.owner.started()
        for request in gone:
            if request.owner is not None:
                request.owner.answered()

    # --- the worker -----------------------------------------------------------------

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._serve, name=f"chared-passes-{id(self):x}", daemon=True)
            self._worker.start()

    def _ready(self) -> bool:
        if not self._queue:
            return False
        queued = {r.owner for r in self._queue if r.eager}  # in the batch already, whatever else they wait for
        return (
            all(c.idle or c in queued for c in self._clients)
            or len(self._queue) >= self.max_batch
            or time.monotonic() - self._first_arrival >= self.linger_s
        )

    def close(self, timeout: float = EXIT_WAIT_S) -> None:
        """Run nothing more: cancel what is queued and wait (up to `timeout`) for the running batch.

        Called at interpreter exit (see _close_all_at_exit); a closed scheduler refuses passes.
        """
        with self._cond:
            self._closed = True
            queued, self._queue = self._queue, []
            worker = self._worker
            self._cond.notify_all()
        for request in queued:
            request.future.cancel()
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._ready():  # a closed scheduler's queue stays empty: never ready
                    if self._closed:
                        self._worker = None
                        return
                    if not self._queue:
                        if not self._cond.wait(IDLE_EXIT_S) and not self._queue:
                            self._worker = None
                            return
                        continue
                    self._cond.wait(max(0.0, self.linger_s - (time.monotonic() - self._first_arrival)))
                batch, dropped = [], []
                while self._queue and len(batch) < self.max_batch:
                    request = self._queue.pop(0)
                    # Subtle: marks the future running, so a cancel() from now on fails (it would make
                    # set_result raise); a pass cancelled before (queued ahead, then not needed) is dropped.
                    (batch if request.future.set_running_or_notify_cancel() else dropped).append(request)
                if self._queue:
                    self._first_arrival = time.monotonic()
                for request in batch + dropped:  # under the lock: no scheduler may see them idle in between
                    if request.owner is not None:
                        request.owner.started()
            for request in dropped:
                if request.owner is not None:
                    request.owner.answered()
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        try:
            logits = self.backend.next_logits_batch([r.runner for r in batch], [r.ids for r in batch])
        except BaseException as exc:  # noqa: BLE001 - every waiting decoding must hear of it
            logits, failure = None, exc
        else:
            failure = None
            self.batches += 1
            self.passes += len(batch)
        for index, request in enumerate(batch):
            try:
                if failure is not None:
                    raise failure
                request.future.set_result(request.finish(logits[index]))
            except BaseException as exc:  # noqa: BLE001
                request.future.set_exception(exc)
            if request.owner is not None:
                request.owner.answered()  # may wake another member's scheduler waiting on this batch


def gather(futures: Iterable[tuple[PassScheduler, Future]]) -> list[Any]:
    """Wait for passes submitted to one or more schedulers (the caller counts as blocked meanwhile)."""
    pairs = list(futures)
    me: Client | None = getattr(_current, "client", None)
    if me is None:
        return [future.result() for _, future in pairs]
    with me._lock:
        me.blocked = me.outstanding > 0
    me.poke()
    try:
        return [future.result() for _, future in pairs]
    finally:
        me.blocked = False


_LOCK = threading.Lock()
_LIVE: "weakref.WeakSet[PassScheduler]" = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    """At interpreter exit, let every running batch finish, and start none.

    The trap: workers are daemon threads, and one inside a backend's kernels (the GIL
    released) keeps running while the interpreter exits under it. Measured: a process
    that ended during a pass (exact scoring leaves passes queued ahead running) died with
    "terminate called without an active exception" (torch, exit 134) or a segfault
    (llama.cpp, exit 139): a finished job that a script or CI step then reads as failed.
    """
    for scheduler in list(_LIVE):
        scheduler.close()


def scheduler_for(backend: Any) -> PassScheduler:
    """The backend's one scheduler (so concurrent decodings share its batches); it lives on the backend."""
    with _LOCK:
        scheduler = getattr(backend, "_chared_scheduler", None)
        if scheduler is None:
            scheduler = PassScheduler(backend)
            backend._chared_scheduler = scheduler
        return scheduler
