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

When to run what is queued: as soon as every registered decoding is waiting for a
pass (nobody else can add to the batch), when the queue holds `max_batch` passes, or
`linger_s` after the first pass arrived (a decoding busy elsewhere, e.g. in a long
search, delays the others by at most that). A lone decoding never waits.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

DEFAULT_MAX_BATCH = 16
DEFAULT_LINGER_S = 0.004
IDLE_EXIT_S = 2.0  # a worker with nothing to do for this long ends; the next pass starts a new one


@dataclass
class _Request:
    runner: Any
    ids: list[int]
    finish: Callable[[Any], Any]  # turns the logits into the result (runs on the worker)
    future: Future


class PassScheduler:
    """The single worker that runs one backend's forward passes, batching what arrives together."""

    def __init__(self, backend: Any, max_batch: int = DEFAULT_MAX_BATCH, linger_s: float = DEFAULT_LINGER_S):
        self.backend = backend
        self.max_batch = max_batch
        self.linger_s = linger_s
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._first_arrival = 0.0
        self._clients = 0
        self._waiting = 0
        self._worker: threading.Thread | None = None
        self.batches = 0  # batched calls made (for stats and benchmarks)
        self.passes = 0

    # --- clients ------------------------------------------------------------------

    @contextlib.contextmanager
    def client(self) -> Iterator[None]:
        """A decoding that will submit passes; while registered, the worker waits for it."""
        with self._cond:
            self._clients += 1
        try:
            yield
        finally:
            with self._cond:
                self._clients -= 1
                self._cond.notify_all()

    def submit(self, runner: Any, ids: Sequence[int], finish: Callable[[Any], Any]) -> Future:
        future: Future = Future()
        with self._cond:
            if not self._queue:
                self._first_arrival = time.monotonic()
            self._queue.append(_Request(runner, list(ids), finish, future))
            self._ensure_worker()
            self._cond.notify_all()
        return future

    @contextlib.contextmanager
    def _waiting_client(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._waiting -= 1

    # --- the worker -----------------------------------------------------------------

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._serve, name=f"chared-passes-{id(self):x}", daemon=True)
            self._worker.start()

    def _ready(self) -> bool:
        if not self._queue:
            return False
        return (
            self._waiting >= self._clients
            or len(self._queue) >= self.max_batch
            or time.monotonic() - self._first_arrival >= self.linger_s
        )

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._ready():
                    if not self._queue:
                        if not self._cond.wait(IDLE_EXIT_S) and not self._queue:
                            self._worker = None
                            return
                        continue
                    self._cond.wait(max(0.0, self.linger_s - (time.monotonic() - self._first_arrival)))
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
                if self._queue:
                    self._first_arrival = time.monotonic()
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        try:
            logits = self.backend.next_logits_batch([r.runner for r in batch], [r.ids for r in batch])
        except BaseException as exc:  # noqa: BLE001 - every waiting decoding must hear of it
            for request in batch:
                request.future.set_exception(exc)
            return
        self.batches += 1
        self.passes += len(batch)
        for request, row in zip(batch, logits):
            try:
                request.future.set_result(request.finish(row))
            except BaseException as exc:  # noqa: BLE001
                request.future.set_exception(exc)


def gather(futures: Iterable[tuple[PassScheduler, Future]]) -> list[Any]:
    """Wait for passes submitted to one or more schedulers; marks the caller as waiting on each."""
    pairs = list(futures)
    with contextlib.ExitStack() as stack:
        for scheduler in {id(s): s for s, _ in pairs}.values():
            stack.enter_context(scheduler._waiting_client())
        return [future.result() for _, future in pairs]


_LOCK = threading.Lock()


def scheduler_for(backend: Any) -> PassScheduler:
    """The backend's one scheduler (so concurrent decodings share its batches); it lives on the backend."""
    with _LOCK:
        scheduler = getattr(backend, "_chared_scheduler", None)
        if scheduler is None:
            scheduler = PassScheduler(backend)
            backend._chared_scheduler = scheduler
        return scheduler
