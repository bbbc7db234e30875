"""Records into what MLflow takes: params, metrics and tags with MLflow-safe names and sizes.

Pure functions (no MLflow call). Per-variant means go under the metric's own name
(`exact_match`), per-sample values under `sample/<name>` at step = the sample's position
in the dataset. (MLflow shows a metric's value at its latest step: logging samples at
steps 0..n-1 and the mean under the same key would show the last sample, not the mean.)
"""

from __future__ import annotations

import json
import math
import re
import zlib
from typing import Any, Iterator

from chared_flows.records import TIMINGS, RunRecord, SampleRecord, VariantSpec, variant_summary

# MLflow limits (mlflow/utils/validation.py): param values up to 6000 chars,
# names of params and metrics from this character set.
_PARAM_MAX = 6000
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")

TIMING = TIMINGS
SAMPLE_PREFIX = "sample/"


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
        "backend": run.backend,
    }
    return {clean_key(k): _param_value(v) for k, v in params.items()}


def variant_metrics(records: list[SampleRecord]) -> dict[str, float]:
    """One variant's numbers (records.variant_summary), with MLflow-safe names."""
    return {clean_key(k): v for k, v in variant_summary(records).items()}


def sample_metrics(record: SampleRecord) -> dict[str, float]:
    """One sample's values, under `sample/<name>` (its step is the sample's index)."""
    values = {**record.scores, **{field: float(getattr(record, field)) for field in TIMING}}
    return {clean_key(SAMPLE_PREFIX + k): float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and math.isfinite(v)}


def sample_step(record: SampleRecord) -> int:
    """The sample's position in the dataset; a stable hash of its id for records without one."""
    return record.sample_index if record.sample_index >= 0 else zlib.crc32(record.sample_id.encode()) % 10**9


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested summary dict -> ("a.b", leaf) pairs."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def flatten_numbers(data: dict[str, Any]) -> dict[str, float]:
    """Nested summary dict -> {"a.b": number} for its finite numbers (metrics)."""
    return {clean_key(name): float(value) for name, value in _flatten(data)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


def flatten_strings(data: dict[str, Any]) -> dict[str, str]:
    """Nested summary dict -> {"a.b": text} for its strings (verdicts become tags)."""
    return {clean_key(name): value for name, value in _flatten(data) if isinstance(value, str)}
