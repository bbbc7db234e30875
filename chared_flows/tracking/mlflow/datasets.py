"""The run's dataset as an MLflow dataset input: kind, path or generator, limit, content hash."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from chared_flows.records import RunRecord
from chared_flows.tracking.mlflow.client import _mlflow


def dataset_input(run: RunRecord) -> Any:
    """The run's dataset as an MLflow dataset input: kind, path or generator, limit, content hash."""
    mlflow = _mlflow()
    from mlflow.data.meta_dataset import MetaDataset

    try:
        ref = json.loads(run.dataset)
    except (TypeError, ValueError):
        ref = {"kind": str(run.dataset)}
    kind = str(ref.get("kind", "dataset"))
    digest = (run.dataset_hash.split(":", 1)[-1] or "unknown")[:16]
    dataset = MetaDataset(_source(ref), name=kind, digest=digest)
    tags = {
        "mlflow.data.context": "eval",
        "chared.dataset": json.dumps(ref, sort_keys=True, default=str)[:500],
        "chared.limit": "all" if run.limit is None else str(run.limit),
        "chared.n_samples": str(run.n_samples),
        "chared.dataset_hash": run.dataset_hash,
    }
    return mlflow.entities.DatasetInput(
        dataset._to_mlflow_entity(), tags=[mlflow.entities.InputTag(k, v) for k, v in tags.items()]
    )


def _source(ref: dict[str, Any]) -> Any:
    """Where the dataset comes from: its file, or for generated (gsm_symbolic), packaged
    (humaneval) or inline data, how to rebuild it."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    if not ref.get("path"):
        return CodeDatasetSource({k: json.dumps(v, sort_keys=True, default=str)[:500] for k, v in ref.items()})
    path = str(Path(os.path.expandvars(str(ref["path"]))).expanduser().resolve())
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
        warnings.simplefilter("ignore")
        return resolve_dataset_source(path)


def log_dataset(client: Any, run: RunRecord, run_ids: list[str]) -> None:
    """The dataset input on each run (the parent and every child)."""
    for run_id in run_ids:
        client.log_inputs(run_id, datasets=[dataset_input(run)])
