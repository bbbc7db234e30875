"""Finding what an earlier attempt of the same chared run left in MLflow, to continue it.

One MLflow parent run per chared run id, found again by its `chared.run_id` tag; its
children by `mlflow.parentRunId` and `chared.variant`. A resume or `chared sync` then
logs only what is missing: the per-sample steps and the traces it does not find here.
"""

from __future__ import annotations

from typing import Any

from chared_flows.tracking.mlflow.convert import SAMPLE_PREFIX


def find_parent(client: Any, experiment_id: str, chared_run_id: str) -> Any:
    """The MLflow parent run of this chared run id, if an earlier attempt made one (the oldest)."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`chared.run_id` = '{chared_run_id}'",
        order_by=["attributes.start_time ASC"], max_results=1000,
    )
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    return parents[0] if parents else None


def find_children(client: Any, experiment_id: str, parent_run_id: str) -> dict[str, Any]:
    """The parent's child runs by variant name (the oldest of each)."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=1000,
    )
    children: dict[str, Any] = {}
    for r in sorted(found, key=lambda r: r.info.start_time):
        children.setdefault(r.data.tags.get("chared.variant", r.info.run_name), r)
    return children


def steps_logged(client: Any, run_id: str) -> set[int]:
    """The sample steps the run has points for already."""
    return {m.step for m in client.get_metric_history(run_id, SAMPLE_PREFIX + "latency_s")}


def samples_traced(client: Any, experiment_id: str, run_id: str) -> set[str]:
    """The sample ids the run has traces for already (read page by page)."""
    seen: set[str] = set()
    token = None
    while True:
        page = client.search_traces(
            locations=[experiment_id], run_id=run_id, include_spans=False, max_results=500, page_token=token
        )
        seen.update(t.info.tags.get("chared.sample_id", "") for t in page)
        token = page.token
        if not token:
            return seen - {""}
