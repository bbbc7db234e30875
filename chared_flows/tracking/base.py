"""The tracker contract and a fan-out that keeps one tracker's failure away from the run.

A tracker sees only plain records (`chared_flows.records`). The workflow runner
calls, in order: `on_run_start(run)`, `on_record(record)` for every sample, and
`on_run_end(run, summary, artifacts)` once. Trackers must not block decoding for
long: a slow backend defers its work (see `promptlayer.py`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Protocol, runtime_checkable

from chared_flows.records import RunRecord, SampleRecord

log = logging.getLogger(__name__)


@runtime_checkable
class Tracker(Protocol):
    name: str

    def on_run_start(self, run: RunRecord) -> None: ...

    def on_record(self, record: SampleRecord) -> None: ...

    def on_run_end(self, run: RunRecord, summary: dict[str, Any], artifacts: list[Path]) -> None: ...


class FanOut:
    """Calls every tracker in turn; one that raises is logged and the others go on.

    Subtle: a failure is never swallowed silently. It is logged with its
    traceback (logger `chared_flows.tracking.base`) and kept in `self.failures`
    as (tracker name, hook, message), so the runner can report it at the end.
    A tracker that failed in `on_run_start` still gets later calls: it may have
    recovered, and each hook decides for itself what it can do.
    """

    name = "fanout"

    def __init__(self, trackers: Iterable[Tracker]):
        self.trackers: list[Tracker] = list(trackers)
        self.failures: list[tuple[str, str, str]] = []

    def _each(self, hook: str, *args: Any) -> None:
        for tracker in self.trackers:
            try:
                getattr(tracker, hook)(*args)
            except Exception as exc:  # noqa: BLE001 - isolation is the point; logged below
                label = getattr(tracker, "name", type(tracker).__name__)
                log.error("tracker %s failed in %s: %s", label, hook, exc, exc_info=True)
                self.failures.append((label, hook, f"{type(exc).__name__}: {exc}"))

    def on_run_start(self, run: RunRecord) -> None:
        self._each("on_run_start", run)

    def on_record(self, record: SampleRecord) -> None:
        self._each("on_record", record)

    def on_run_end(
        self, run: RunRecord, summary: dict[str, Any] | None = None, artifacts: list[Path] | None = None
    ) -> None:
        self._each("on_run_end", run, summary or {}, list(artifacts or []))
