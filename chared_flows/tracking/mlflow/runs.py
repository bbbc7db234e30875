"""The life of the MLflow runs: the experiment, one parent run per chared run and one child
per variant (found again or created, then RUNNING), their final numbers, and their end.

An interrupted run ends KILLED or FAILED (`terminate`), never RUNNING; a finished one ends
with its means, verdict tags, samples table and report artifacts (`finish`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chared_flows.records import RunRecord, SampleRecord, VariantSpec
from chared_flows.tracking.mlflow.client import _local_artifact_root
from chared_flows.tracking.mlflow.convert import flatten_numbers, flatten_strings, run_params, variant_metrics, variant_params
from chared_flows.tracking.mlflow.resume import find_parent
from chared_flows.tracking.mlflow.tables import log_artifact, replace_table, samples_table
from chared_flows.tracking.mlflow.write import log_changed, log_params, set_tags


def experiment_id(client: Any, tracking_uri: str, name: str) -> str:
    """The experiment `name`, created (artifacts next to a local store) when it does not exist."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = _local_artifact_root(tracking_uri)
    return client.create_experiment(name, artifact_location=location)


def _tags(run: RunRecord) -> dict[str, str]:
    return {"chared.run_id": run.run_id, "chared.workflow": run.workflow}


def open_parent(client: Any, experiment: str, run: RunRecord) -> str:
    """The parent run of `run` (an earlier attempt's, or a new one), RUNNING, with its params."""
    parent = find_parent(client, experiment, run.run_id)
    if parent is None:
        parent = client.create_run(experiment, run_name=f"{run.workflow}@{run.workflow_version}", tags=_tags(run))
    set_running(client, parent)
    log_params(client, parent, run_params(run))
    return parent.info.run_id


def open_child(client: Any, experiment: str, parent_run_id: str, run: RunRecord, spec: VariantSpec,
               child: Any = None) -> str:
    """The variant's child run (`child` if an earlier attempt made it), RUNNING, with its params."""
    if child is None:
        tags = {**_tags(run), "mlflow.parentRunId": parent_run_id, "chared.variant": spec.name}
        child = client.create_run(experiment, run_name=spec.name, tags=tags)
    set_running(client, child)
    log_params(client, child, {**run_params(run), **variant_params(spec)})
    return child.info.run_id


def set_running(client: Any, found: Any) -> None:
    if found.info.status != "RUNNING":
        client.update_run(found.info.run_id, status="RUNNING")


def finish(client: Any, parent_run_id: str, child_run_ids: dict[str, str],
           records: dict[str, list[SampleRecord]], summary: dict[str, Any], artifacts: list[Path]) -> None:
    """Each child's means and verdicts and table, FINISHED; then the parent's, its artifacts, FINISHED."""
    for variant, run_id in child_run_ids.items():
        rows = records.get(variant, [])
        extra = summary.get(variant, {}) if isinstance(summary.get(variant), dict) else {}
        _close(client, run_id, {**variant_metrics(rows), **flatten_numbers(extra)}, flatten_strings(extra), rows)
    every = [r for rows in records.values() for r in rows]
    if every:
        replace_table(client, parent_run_id, samples_table(every))
    log_changed(client, parent_run_id, flatten_numbers(summary))
    set_tags(client, parent_run_id, flatten_strings(summary))
    for path in artifacts:
        log_artifact(client, parent_run_id, Path(path))
    client.set_terminated(parent_run_id, "FINISHED")


def _close(client: Any, run_id: str, metrics: dict[str, float], tags: dict[str, str],
           rows: list[SampleRecord]) -> None:
    log_changed(client, run_id, metrics)
    set_tags(client, run_id, tags)
    if rows:
        replace_table(client, run_id, samples_table(rows))
    client.set_terminated(run_id, "FINISHED")


def terminate(client: Any, run_ids: list[str], status: str) -> None:
    """End the runs `status` (KILLED, FAILED): an interrupted run never stays RUNNING."""
    for run_id in run_ids:
        client.set_terminated(run_id, status)
