"""The tracker contract and a fan-out that keeps one tracker's failure away from the run.

A tracker sees only plain records (`chared_flows.records`). The workflow runner
calls, in order: `on_run_start(run)`, `on_record(record)` for every sample, and
`on_run_end(run, summary, artifacts)` once; or, when the run stops early,
`on_run_abort(run, status)` with "KILLED" or "FAILED" (optional for a tracker).
Trackers must not block decoding for long: a slow backend defers its work (see
`promptlayer.py`) or stops trying after its first failure (see `mlflow/tracker.py`).
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, runtime_checkable

from chared_flows.records import RunRecord, SampleRecord

log = logging.getLogger(__name__)


@runtime_checkable
class Tracker(Protocol):
    name: str

    def on_run_start(self, run: RunRecord) -> None: ...

    def on_record(self, record: SampleRecord) -> None: ...

    def on_run_end(self, run: RunRecord, summary: dict[str, Any], artifacts: list[Path]) -> None: ...


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done, then deliver them.

    subtle: an interrupt that lands inside a tracker's store write (SQLAlchemy on the
    SQLite MLflow store) can leave that store locked, so the tracker cannot even mark
    the run KILLED afterwards and it stays RUNNING. Tracker calls are short and bounded
    (their own timeouts), so they are allowed to finish and the signal is re-raised
    right after, to whatever handler was there. (Masking the signal with pthread_sigmask
    is not enough: another thread receives it and Python still runs the handler in the
    main thread.) Only the main thread can set handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    # None: a handler not set from Python, which cannot be put back; such a signal is left alone
    handlers = {sig: h for sig in (signal.SIGINT, signal.SIGTERM) if (h := signal.getsignal(sig)) is not None}
    for sig in handlers:
        signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if held:
            signal.raise_signal(held[0])


class FanOut:
    """Calls every tracker in turn; one that raises is logged and the others go on.

    Subtle: a failure is never swallowed silently. It is kept in `self.failures`
    as (tracker name, hook, message) for the caller to report (the CLI prints one
    line per tracker and exits non-zero), logged once per tracker as a one-line
    warning, and with its traceback at DEBUG level (logger
    `chared_flows.tracking.base`): a dead server must not print a traceback per call.
    A tracker that failed in `on_run_start` still gets later calls: it may have
    recovered, and each hook decides for itself what it can do.
    """

    name = "fanout"

    def __init__(self, trackers: Iterable[Tracker]):
        self.trackers: list[Tracker] = list(trackers)
        self.failures: list[tuple[str, str, str]] = []

    def _each(self, hook: str, *args: Any, optional: bool = False) -> None:
        for tracker in self.trackers:
            method = getattr(tracker, hook, None)
            if method is None and optional:
                continue
            try:
                with uninterrupted():
                    method(*args)
            except Exception as exc:  # noqa: BLE001 - isolation is the point; recorded below
                label = getattr(tracker, "name", type(tracker).__name__)
                message = " ".join(f"{type(exc).__name__}: {exc}".split())
                if not any(name == label for name, _, _ in self.failures):
                    log.warning("tracker %s failed in %s: %s", label, hook, message[:300])
                log.debug("tracker %s failed in %s", label, hook, exc_info=True)
                self.failures.append((label, hook, message))

    def failed(self) -> dict[str, str]:
        """Tracker name -> its first failure's message, for the trackers that failed."""
        first: dict[str, str] = {}
        for name, hook, message in self.failures:
            first.setdefault(name, f"{message} (in {hook})")
        return first

    def on_run_start(self, run: RunRecord) -> None:
        self._each("on_run_start", run)

    def on_record(self, record: SampleRecord) -> None:
        self._each("on_record", record)

    def on_run_end(
        self, run: RunRecord, summary: dict[str, Any] | None = None, artifacts: list[Path] | None = None
    ) -> None:
        self._each("on_run_end", run, summary or {}, list(artifacts or []))

    def on_run_abort(self, run: RunRecord, status: str = "KILLED") -> None:
        self._each("on_run_abort", run, status, optional=True)
