"""MLflow tracking: one parent run per workflow run, one nested child run per variant.

Uses `MlflowClient` with explicit run ids, never `mlflow.start_run()`: the
global active-run stack is per thread and per process, and two runners in one
process (tests, `chared ab` in threads) would otherwise write into each other.

Default store: a local SQLite file, `sqlite:///<cwd>/.chared/mlflow.db`
(the prompt registry needs a database store; a plain `./mlruns` folder has
none). `MLFLOW_TRACKING_URI` wins when set.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from chared_flows.errors import ConfigError, MissingExtraError, TrackingError
from chared_flows.records import RunRecord, SampleRecord, VariantSpec

log = logging.getLogger(__name__)

# MLflow limits (mlflow/utils/validation.py): param values up to 6000 chars,
# names of params and metrics from this character set.
_PARAM_MAX = 6000
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")
_TABLE_FILE = "samples.json"


def _mlflow():
    # Subtle: telemetry must be off before mlflow is imported; it reads the
    # variable at import time and otherwise tries to reach the internet.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # subtle: against an unreachable server MLflow's REST client retries each call with
    # exponential backoff for minutes (7 retries, 120 s timeout). A tracker must not hold
    # up decoding that long, so unless the user chose otherwise: 2 retries, 10 s.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        import mlflow
    except ImportError as exc:
        raise MissingExtraError("mlflow", "tracking") from exc
    return mlflow


def default_tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else a SQLite file under `<root>/.chared/`."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    folder = Path(root or Path.cwd()).resolve() / ".chared"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _local_artifact_root(tracking_uri: str) -> str | None:
    """For a local sqlite store, keep artifacts next to the database, not in ./mlruns."""
    if not tracking_uri.startswith("sqlite:///"):
        return None  # a server decides where artifacts go
    db = Path(tracking_uri[len("sqlite:///"):])
    return (db.parent / "mlartifacts").resolve().as_uri()


def make_client(tracking_uri: str | None = None):
    mlflow = _mlflow()
    uri = tracking_uri or default_tracking_uri()
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def clean_key(key: str) -> str:
    return _BAD_KEY_CHARS.sub("_", key)[:250]


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:_PARAM_MAX]


def variant_params(spec: VariantSpec) -> dict[str, str]:
    params = {
        "variant": spec.name,
        "members": ",".join(spec.members),
        "weights": ",".join(f"{w:g}" for w in spec.weights) if spec.weights else "",
        "mode": spec.mode,
        "rule": spec.rule,
        "is_single": str(spec.is_single),
    }
    families = getattr(spec, "tokenizer_families", ())
    if families:
        params["tokenizer_families"] = ",".join(families)
    for i, member in enumerate(spec.members):
        params[f"member.{i}"] = member
    for key, value in sorted(spec.decoding.items()):
        params[f"decoding.{key}"] = value
    return {clean_key(k): _param_value(v) for k, v in params.items()}


def run_params(run: RunRecord) -> dict[str, str]:
    params = {
        "workflow": f"{run.workflow}@{run.workflow_version}",
        "template": f"{run.template}@{run.template_version}",
        "template_hash": run.template_hash,
        "dataset": run.dataset,
        "package_version": run.package_version,
        "git_commit": run.git_commit,
        "variants": ",".join(v.name for v in run.variants),
        "chared_run_id": run.run_id,
    }
    return {clean_key(k): _param_value(v) for k, v in params.items()}


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def variant_metrics(records: list[SampleRecord]) -> dict[str, float]:
    """Means of every score, timing and forward passes over one variant's records."""
    out: dict[str, float] = {"n_samples": float(len(records))}
    out["n_errors"] = float(sum(1 for r in records if r.error))
    names = sorted({name for r in records for name in r.scores})
    for name in names:
        mean = _mean([r.scores[name] for r in records if name in r.scores])
        if mean is not None:
            out[name] = mean
    for field in ("latency_s", "chars_per_s", "forward_passes"):
        mean = _mean([float(getattr(r, field)) for r in records])
        if mean is not None:
            out[f"{field}_mean"] = mean
    out["forward_passes_total"] = float(sum(r.forward_passes for r in records))
    return {clean_key(k): v for k, v in out.items()}


def samples_table(records: list[SampleRecord]) -> dict[str, list[Any]]:
    """Column-wise table for `log_table`: one row per sample, scores as columns."""
    score_names = sorted({name for r in records for name in r.scores})
    table: dict[str, list[Any]] = {
        key: []
        for key in (
            "sample_id", "variant", "inputs", "output", "parsed", "reference",
            "finish_reason", "latency_s", "chars_per_s", "forward_passes", "error",
        )
    }
    for name in score_names:
        table[f"score.{name}"] = []
    for r in records:
        table["sample_id"].append(r.sample_id)
        table["variant"].append(r.variant)
        table["inputs"].append(json.dumps(r.inputs, default=str, ensure_ascii=False))
        table["output"].append(r.output)
        table["parsed"].append(None if r.parsed is None else str(r.parsed))
        table["reference"].append(None if r.reference is None else str(r.reference))
        table["finish_reason"].append(r.finish_reason)
        table["latency_s"].append(r.latency_s)
        table["chars_per_s"].append(r.chars_per_s)
        table["forward_passes"].append(r.forward_passes)
        table["error"].append(r.error or "")
        for name in score_names:
            table[f"score.{name}"].append(r.scores.get(name))
    return table


def flatten_numbers(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested summary dict -> {"a.b": number}; non-numbers are left out."""
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_numbers(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                out[clean_key(name)] = float(value)
    return out


class MlflowTracker:
    """Logs a workflow run to MLflow. Not thread-safe per instance; use one per run."""

    name = "mlflow"

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        prompts: list[tuple[str, int, str]] | None = None,
    ):
        """`prompts`: (name, version, text) of the templates the run uses; each is published
        to MLflow's prompt registry at run start and its registry version logged as a param."""
        self.client, self.tracking_uri = make_client(tracking_uri)
        self.experiment = experiment
        self.prompts = list(prompts or [])
        self.published: dict[str, int] = {}
        self._record_failures = 0  # consecutive; see on_record
        self.parent_run_id: str | None = None
        self.child_run_ids: dict[str, str] = {}
        self._records: dict[str, list[SampleRecord]] = {}

    # -- hooks -------------------------------------------------------------
    def on_run_start(self, run: RunRecord) -> None:
        experiment_id = self._experiment_id(self.experiment or f"chared/{run.workflow}")
        tags = {"chared.run_id": run.run_id, "chared.workflow": run.workflow}
        parent = self.client.create_run(
            experiment_id, run_name=f"{run.workflow}@{run.workflow_version}", tags=tags
        )
        self.parent_run_id = parent.info.run_id
        self._log_params(self.parent_run_id, run_params(run))
        for spec in run.variants:
            child = self.client.create_run(
                experiment_id,
                run_name=spec.name,
                tags={**tags, "mlflow.parentRunId": self.parent_run_id, "chared.variant": spec.name},
            )
            self.child_run_ids[spec.name] = child.info.run_id
            self._log_params(child.info.run_id, {**run_params(run), **variant_params(spec)})
        self._publish_prompts()

    def _publish_prompts(self) -> None:
        """Last in on_run_start: a registry failure is logged and tagged, the runs stay usable."""
        for name, version, text in self.prompts:
            try:
                mlflow_version = publish_template(name, version, text, tracking_uri=self.tracking_uri)
            except Exception as exc:  # noqa: BLE001 - the run goes on; the failure is logged and tagged
                log.warning("mlflow: publishing template %s@%s failed: %s", name, version, exc, exc_info=True)
                self.client.set_tag(self.parent_run_id, f"chared.prompt_error.{clean_key(name)}", str(exc)[:500])
                continue
            self.published[f"{name}@{version}"] = mlflow_version
            self._log_params(self.parent_run_id, {clean_key(f"prompt.{name}.v{version}"): f"prompts:/{name}/{mlflow_version}"})

    # After this many failed per-record calls in a row, per-record metrics stop (the store
    # is down or slow); records are still kept and logged in bulk by on_run_end.
    MAX_RECORD_FAILURES = 3

    def on_record(self, record: SampleRecord) -> None:
        bucket = self._records.setdefault(record.variant, [])
        step = len(bucket)
        bucket.append(record)
        run_id = self._child(record.variant)
        if self._record_failures >= self.MAX_RECORD_FAILURES:
            return
        values = {**record.scores, "latency_s": record.latency_s, "chars_per_s": record.chars_per_s}
        try:
            self._log_metrics(run_id, values, step=step)
        except Exception:
            self._record_failures += 1
            if self._record_failures >= self.MAX_RECORD_FAILURES:
                log.warning("mlflow: %d metric calls failed in a row; per-sample metrics stop, "
                            "the run's totals are still logged at its end", self._record_failures)
            raise
        self._record_failures = 0

    def on_run_end(
        self, run: RunRecord, summary: dict[str, Any] | None = None, artifacts: list[Path] | None = None
    ) -> None:
        if self.parent_run_id is None:
            raise TrackingError("MlflowTracker.on_run_end before on_run_start; call on_run_start(run) first")
        for variant, run_id in self.child_run_ids.items():
            records = self._records.get(variant, [])
            self._log_metrics(run_id, variant_metrics(records))
            if records:
                self.client.log_table(run_id, samples_table(records), artifact_file=_TABLE_FILE)
            self.client.set_terminated(run_id, "FINISHED")
        every = [r for rs in self._records.values() for r in rs]
        if every:
            self.client.log_table(self.parent_run_id, samples_table(every), artifact_file=_TABLE_FILE)
        self._log_metrics(self.parent_run_id, flatten_numbers(summary or {}))
        for path in artifacts or []:
            self._log_artifact(Path(path))
        self.client.set_terminated(self.parent_run_id, "FINISHED")

    # -- helpers -----------------------------------------------------------
    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = _local_artifact_root(self.tracking_uri)
        return self.client.create_experiment(name, artifact_location=location)

    def _child(self, variant: str) -> str:
        if variant not in self.child_run_ids:
            raise TrackingError(
                f"record for variant {variant!r} which the run did not declare; "
                f"declared: {sorted(self.child_run_ids)}"
            )
        return self.child_run_ids[variant]

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        mlflow = _mlflow()
        items = [mlflow.entities.Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[start:start + 100], synchronous=True)

    def _log_metrics(self, run_id: str, values: dict[str, float], step: int = 0) -> None:
        mlflow = _mlflow()
        now = int(time.time() * 1000)
        items = [
            mlflow.entities.Metric(clean_key(k), float(v), now, step)
            for k, v in values.items()
            if isinstance(v, (int, float)) and math.isfinite(v)
        ]
        if items:
            self.client.log_batch(run_id, metrics=items, synchronous=True)

    def _log_artifact(self, path: Path) -> None:
        if not path.exists():
            raise ConfigError(f"artifact {path} does not exist; write the report before on_run_end")
        if path.is_dir():
            self.client.log_artifacts(self.parent_run_id, str(path), artifact_path=path.name)
        else:
            self.client.log_artifact(self.parent_run_id, str(path))


def publish_template(
    name: str,
    version: int,
    text: str,
    tags: dict[str, str] | None = None,
    *,
    tracking_uri: str | None = None,
) -> int:
    """Register one template version in MLflow's prompt registry; returns MLflow's version.

    MLflow numbers prompt versions itself (1, 2, ...), so our own version and
    the text's hash go into tags, and publishing the same (name, version, text)
    twice returns the existing MLflow version instead of adding a new one.
    """
    import hashlib

    client, _ = make_client(tracking_uri)
    text_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    mlflow_name = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)
    for existing in _prompt_versions(client, mlflow_name):
        found = existing.tags or {}
        if found.get("chared.version") == str(version) and found.get("chared.hash") == text_hash:
            return int(existing.version)
    all_tags = {**(tags or {}), "chared.name": name, "chared.version": str(version), "chared.hash": text_hash}
    registered = client.register_prompt(
        mlflow_name, text, commit_message=f"{name}@{version}", tags={k: str(v) for k, v in all_tags.items()}
    )
    return int(registered.version)


def _prompt_versions(client, name: str) -> list[Any]:
    if client.get_prompt(name) is None:
        return []
    return list(client.search_prompt_versions(name, max_results=1000))


def load_samples_table(client, run_id: str) -> list[dict[str, Any]]:
    """Read back the per-sample table of one run as a list of row dicts.

    Subtle: `MlflowClient.load_table` finds runs through `mlflow.search_runs`,
    which uses the *global* tracking URI and not the client's, so it misses
    runs in any other store. This reads the artifact through the client.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, _TABLE_FILE, tmp)
        data = json.loads(Path(local).read_text(encoding="utf-8"))
    return [dict(zip(data["columns"], row)) for row in data["data"]]
