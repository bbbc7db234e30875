"""Params, metrics and tags onto one MLflow run, in MLflow's batch sizes, only what it lacks.

A replay (resume, `chared sync`) calls these again with the same values: a param the run
has is skipped (MLflow refuses to change one), a metric or tag equal to the run's is not
written again, so the run gains no duplicate points.
"""

from __future__ import annotations

import math
import time
from typing import Any

from chared_flows.tracking.mlflow.client import _mlflow
from chared_flows.tracking.mlflow.convert import clean_key


def log_params(client: Any, found: Any, params: dict[str, str]) -> None:
    """Params the run `found` does not have yet (MLflow refuses to change a logged param)."""
    mlflow = _mlflow()
    have = found.data.params if hasattr(found, "data") else {}
    items = [mlflow.entities.Param(k, v) for k, v in params.items() if k not in have]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(found.info.run_id, params=items[start:start + 100], synchronous=True)


def log_metrics(client: Any, run_id: str, values: dict[str, float], step: int = 0) -> None:
    mlflow = _mlflow()
    now = int(time.time() * 1000)
    items = [
        mlflow.entities.Metric(clean_key(k), float(v), now, step)
        for k, v in values.items()
        if isinstance(v, (int, float)) and math.isfinite(v)
    ]
    for start in range(0, len(items), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=items[start:start + 1000], synchronous=True)


def log_changed(client: Any, run_id: str, values: dict[str, float]) -> None:
    """Log only the values that differ from what the run shows now (a replay adds no points)."""
    current = client.get_run(run_id).data.metrics
    log_metrics(client, run_id, {k: v for k, v in values.items() if current.get(clean_key(k)) != float(v)})


def set_tags(client: Any, run_id: str, tags: dict[str, str]) -> None:
    """Tags (an A/B's verdicts) that differ from what the run shows now."""
    current = client.get_run(run_id).data.tags if tags else {}
    for key, value in tags.items():
        if current.get(key) != value:
            client.set_tag(run_id, key, value[:5000])
