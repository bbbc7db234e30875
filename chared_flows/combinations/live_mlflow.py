"""Live A/B on MLflow traces: the assignment as trace tags, feedback as assessments, and reading both back.

Each routed call runs inside a span (`live:<experiment>`); the trace gets the tags
chared.live.experiment / .arm / .version / .key (a hash of the routing key, never the key).
A user's score is `mlflow.log_feedback` on that trace. `observations` reads every trace of an
experiment with its feedback, for the live report.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any, Iterator

from chared_flows.combinations.live_stats import Observation
from chared_flows.errors import ConfigError, TrackingError
from chared_flows.tracking.mlflow import _mlflow, default_tracking_uri

TAG_EXPERIMENT, TAG_ARM, TAG_VERSION, TAG_KEY, TAG_CONTROL = (
    "chared.live.experiment", "chared.live.arm", "chared.live.version", "chared.live.key", "chared.live.control")
log = logging.getLogger("chared_flows.live")


def use_store(tracking_uri: str | None = None) -> str:
    """Point MLflow at `tracking_uri`, or at the package's default store when nothing is set yet."""
    mlflow = _mlflow()
    if tracking_uri or not mlflow.is_tracking_uri_set():
        mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    return mlflow.get_tracking_uri()


class MlflowRecorder:
    """Writes each assignment on the call's MLflow trace; sends feedback as trace assessments."""

    name = "mlflow"

    def __init__(self, tracking_uri: str | None = None):
        self.tracking_uri = use_store(tracking_uri)
        self.mlflow = _mlflow()

    @contextlib.contextmanager
    def call(self, assignment: Any, inputs: Any) -> Iterator[dict]:
        tags = {TAG_EXPERIMENT: assignment.experiment, TAG_ARM: assignment.arm,
                TAG_VERSION: assignment.version, TAG_KEY: assignment.key_hash, TAG_CONTROL: assignment.control}
        with self.mlflow.start_span(name=f"live:{assignment.experiment}") as span:
            self.mlflow.update_current_trace(tags=tags)
            span.set_attributes(tags)
            span.set_inputs(inputs if isinstance(inputs, (dict, str)) else {"input": str(inputs)})
            handle = {"trace_id": span.trace_id}
            yield handle
            span.set_outputs(handle.get("output"))

    def feedback(self, trace_id: str, name: str, value: Any, source: str | None = None) -> None:
        from mlflow.entities import AssessmentSource

        try:
            self.mlflow.log_feedback(trace_id=trace_id, name=name, value=value,
                                     source=AssessmentSource(source_type="HUMAN", source_id=source or "user"))
        except Exception as exc:  # noqa: BLE001 - MLflow raises its own class for every failure
            if "not found" in str(exc).lower():
                raise ConfigError(f"no MLflow trace {trace_id!r} at {self.tracking_uri}; pass the trace id the "
                                  "routed call returned (router.last_assignment().trace_id)") from None
            raise TrackingError(f"feedback on trace {trace_id!r} failed: {' '.join(str(exc).split())[:200]}") from exc

    def event(self, experiment: str, what: dict) -> None:
        """A guard's decision, as a tag on the MLflow experiment of the traces (and a log line)."""
        log.warning("live A/B %s: %s", experiment, json.dumps(what, default=str))
        client = self.mlflow.MlflowClient(self.tracking_uri)
        active = self.mlflow.tracking.fluent._get_experiment_id() or "0"
        client.set_experiment_tag(active, f"chared.live.{experiment}.event", json.dumps(what, default=str)[:5000])


def observations(experiment: str, since: float | None = None, tracking_uri: str | None = None,
                 ) -> tuple[list[Observation], int, str]:
    """(one Observation per numeric feedback value, number of traces, control arm) of a live experiment."""
    mlflow = _mlflow()
    use_store(tracking_uri)
    client = mlflow.MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return [], 0, ""
    traces = mlflow.search_traces(locations=ids, filter_string=f"tag.`{TAG_EXPERIMENT}` = '{experiment}'",
                                  return_type="list", include_spans=False)
    out, n, control = [], 0, ""
    for trace in traces:
        info = trace.info
        if since is not None and info.request_time / 1000.0 < since:
            continue
        n += 1
        tags = info.tags or {}
        control = control or tags.get(TAG_CONTROL, "")
        for assessment in info.assessments or []:
            value = _number(getattr(assessment, "value", None))
            if value is not None:
                out.append(Observation(tags.get(TAG_ARM, ""), assessment.name, value, tags.get(TAG_VERSION, "")))
    return out, n, control


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None

