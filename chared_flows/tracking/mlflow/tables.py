"""The samples table and the run's artifacts: written whole, read back through the client."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from chared_flows.errors import ConfigError
from chared_flows.records import SampleRecord

_TABLE_FILE = "samples.json"
_COLUMNS = ("sample_id", "variant", "inputs", "output", "parsed", "reference",
            "finish_reason", "latency_s", "chars_per_s", "forward_passes", "batch_size", "error")


def samples_table(records: list[SampleRecord]) -> dict[str, list[Any]]:
    """Column-wise table for `log_table`: one row per sample, scores as columns."""
    score_names = sorted({name for r in records for name in r.scores})
    table: dict[str, list[Any]] = {key: [] for key in _COLUMNS}
    for name in score_names:
        table[f"score.{name}"] = []
    for r in records:
        for key, value in _row(r).items():
            table[key].append(value)
        for name in score_names:
            table[f"score.{name}"].append(r.scores.get(name))
    return table


def _row(r: SampleRecord) -> dict[str, Any]:
    """One record's cells, without its scores."""
    return {
        "sample_id": r.sample_id, "variant": r.variant,
        "inputs": json.dumps(r.inputs, default=str, ensure_ascii=False), "output": r.output,
        "parsed": None if r.parsed is None else str(r.parsed),
        "reference": None if r.reference is None else str(r.reference),
        "finish_reason": r.finish_reason, "latency_s": r.latency_s, "chars_per_s": r.chars_per_s,
        "forward_passes": r.forward_passes, "batch_size": r.batch_size, "error": r.error or "",
    }


def replace_table(client: Any, run_id: str, table: dict[str, list[Any]]) -> None:
    """Write the samples table as a whole (MlflowClient.log_table would append to an existing one)."""
    columns = list(table)
    rows = [list(row) for row in zip(*table.values())]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / _TABLE_FILE
        path.write_text(json.dumps({"columns": columns, "data": rows}, default=str, ensure_ascii=False),
                        encoding="utf-8")
        client.log_artifact(run_id, str(path))
    tags = client.get_run(run_id).data.tags
    listed = json.loads(tags.get("mlflow.loggedArtifacts", "[]"))
    entry = {"path": _TABLE_FILE, "type": "table"}  # what makes the UI show it as a table
    if entry not in listed:
        client.set_tag(run_id, "mlflow.loggedArtifacts", json.dumps(listed + [entry]))


def load_samples_table(client, run_id: str) -> list[dict[str, Any]]:
    """Read back the per-sample table of one run as a list of row dicts.

    Subtle: `MlflowClient.load_table` finds runs through `mlflow.search_runs`,
    which uses the *global* tracking URI and not the client's, so it misses
    runs in any other store. This reads the artifact through the client.
    """
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, _TABLE_FILE, tmp)
        data = json.loads(Path(local).read_text(encoding="utf-8"))
    return [dict(zip(data["columns"], row)) for row in data["data"]]


def log_artifact(client: Any, run_id: str, path: Path) -> None:
    """A report file, or a folder under its own name, onto the run."""
    if not path.exists():
        raise ConfigError(f"artifact {path} does not exist; write the report before on_run_end")
    if path.is_dir():
        client.log_artifacts(run_id, str(path), artifact_path=path.name)
    else:
        client.log_artifact(run_id, str(path))
