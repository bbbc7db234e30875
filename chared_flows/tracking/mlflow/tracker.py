"""MlflowTracker: the Tracker hooks, the records it keeps, and how it behaves in an outage.

Outages: the first failed call marks the tracker offline and raises one TrackingError
(MLflow's client would otherwise retry every later call for seconds each); nothing more
is attempted until `on_run_end`, which tries once more. The records stay on disk and a
resume or `chared sync` completes the MLflow side.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from chared_flows.errors import TrackingError
from chared_flows.records import RunRecord, SampleRecord, VariantSpec
from chared_flows.tracking.mlflow import resume, runs
from chared_flows.tracking.mlflow.client import _short, make_client
from chared_flows.tracking.mlflow.convert import sample_metrics, sample_step
from chared_flows.tracking.mlflow.datasets import log_dataset
from chared_flows.tracking.mlflow.prompts import publish_prompts
from chared_flows.tracking.mlflow.traces import log_trace
from chared_flows.tracking.mlflow.write import log_metrics

log = logging.getLogger(__name__)


class MlflowTracker:
    """Logs a workflow run to MLflow. Not thread-safe per instance; use one per run."""

    name = "mlflow"

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        prompts: list[tuple[str, int, str]] | None = None,
        traces: bool = True,
    ):
        """`prompts`: (name, version, text) of the templates the run uses; each is published to
        MLflow's prompt registry at run start (in MLflow's `{{name}}` syntax), linked to the
        runs, and its registry version logged as a param. `traces`: one trace per generation."""
        self.client, self.tracking_uri = make_client(tracking_uri)
        self.experiment = experiment
        self.prompts = list(prompts or [])
        self.traces = traces
        self.published: dict[str, int] = {}
        self.offline: str | None = None  # why, once a call has failed
        self.parent_run_id: str | None = None
        self.child_run_ids: dict[str, str] = {}
        self.experiment_id: str | None = None
        self._specs: dict[str, VariantSpec] = {}
        self._records: dict[str, dict[str, SampleRecord]] = {}  # variant -> sample id -> latest
        self._logged_steps: dict[str, set[int]] = {}
        self._traced: dict[str, set[str]] = {}

    # -- hooks -------------------------------------------------------------
    def on_run_start(self, run: RunRecord) -> None:
        self._specs = {spec.name: spec for spec in run.variants}
        self._records = {spec.name: {} for spec in run.variants}
        self._guard(self._open, run)

    def on_record(self, record: SampleRecord) -> None:
        if record.variant not in self._specs:
            raise TrackingError(
                f"record for variant {record.variant!r} which the run did not declare; "
                f"declared: {sorted(self._specs)}"
            )
        self._records[record.variant][record.sample_id] = record
        if self.offline is None and self.parent_run_id is not None:
            self._guard(self._log_record, record)

    def on_run_end(
        self, run: RunRecord, summary: dict[str, Any] | None = None, artifacts: list[Path] | None = None
    ) -> None:
        if self.offline is not None:
            self._reconnect(run)  # one more try: the server may be back
        if self.parent_run_id is None:
            raise TrackingError("MlflowTracker.on_run_end before on_run_start; call on_run_start(run) first")
        records = {variant: list(by_sample.values()) for variant, by_sample in self._records.items()}
        self._guard(runs.finish, self.client, self.parent_run_id, self.child_run_ids, records,
                    summary or {}, list(artifacts or []))

    def on_run_abort(self, run: RunRecord, status: str = "KILLED") -> None:
        """The run stopped before its end: its MLflow runs end `status` (KILLED/FAILED), not RUNNING."""
        if self.offline is not None or self.parent_run_id is None:
            return  # unreachable: `chared sync` or a resume will close them
        self._guard(runs.terminate, self.client, [*self.child_run_ids.values(), self.parent_run_id], status)

    # -- outages -------------------------------------------------------------
    def _guard(self, step, *args: Any) -> Any:
        """Run one step; the first failure marks the tracker offline and raises one clear error."""
        try:
            return step(*args)
        except TrackingError:
            raise
        except Exception as exc:  # noqa: BLE001 - turned into one TrackingError; the cause is chained
            self.offline = _short(exc)
            log.debug("mlflow: %s failed", getattr(step, "__name__", step), exc_info=True)
            raise TrackingError(f"MLflow at {self.tracking_uri} failed: {self.offline}") from exc

    def _reconnect(self, run: RunRecord) -> None:
        self.offline = None
        self.parent_run_id, self.child_run_ids = None, {}
        self._guard(self._open, run)
        for by_sample in self._records.values():
            for record in by_sample.values():
                self._guard(self._log_record, record)

    # -- opening: find or create the runs, then what they have already --------
    def _open(self, run: RunRecord) -> None:
        name = self.experiment or f"chared/{run.workflow}"
        self.experiment_id = runs.experiment_id(self.client, self.tracking_uri, name)
        self.parent_run_id = runs.open_parent(self.client, self.experiment_id, run)
        children = resume.find_children(self.client, self.experiment_id, self.parent_run_id)
        for spec in run.variants:
            child_id = runs.open_child(self.client, self.experiment_id, self.parent_run_id, run, spec,
                                       children.get(spec.name))
            self.child_run_ids[spec.name] = child_id
            self._logged_steps[spec.name] = resume.steps_logged(self.client, child_id)
            traced = resume.samples_traced(self.client, self.experiment_id, child_id) if self.traces else set()
            self._traced[spec.name] = traced
        every = [self.parent_run_id, *self.child_run_ids.values()]
        if run.dataset_hash:
            log_dataset(self.client, run, every)
        self.published.update(publish_prompts(self.client, self.tracking_uri, self.prompts, every, self.parent_run_id))

    # -- per record ----------------------------------------------------------
    def _log_record(self, record: SampleRecord) -> None:
        """This sample's points and trace, unless this MLflow run has them already (a replay)."""
        if record.error:
            return  # no numbers to show; a retry replaces the record
        run_id, step = self.child_run_ids[record.variant], sample_step(record)
        if step not in self._logged_steps[record.variant]:
            log_metrics(self.client, run_id, sample_metrics(record), step=step)
            self._logged_steps[record.variant].add(step)
        if self.traces and record.sample_id not in self._traced[record.variant]:
            log_trace(self.client, self.tracking_uri, self.experiment_id, run_id, record, self._specs[record.variant])
            self._traced[record.variant].add(record.sample_id)
