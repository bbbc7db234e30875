"""Plain records that cross layers: what a run produced, with no behaviour.

Leaf module (stdlib only). Tracking and reports see only these, never the
decoding engine or the workflow runner. Add fields at the end with defaults;
never rename one (stored outboxes and resumable run files hold old records).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class VariantSpec:
    """One thing under comparison: a single model or an ensemble."""

    name: str
    members: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    # None: not set, the engine's default (decoding/config.py declares every default once);
    # a workflow's variants always carry the resolved values.
    mode: str | None = None
    rule: str | None = None
    decoding: dict[str, Any] = field(default_factory=dict)
    # One per member, e.g. ("byte_level", "sentencepiece") (decoding/vocab.py); logged as a param.
    tokenizer_families: tuple[str, ...] = ()
    # A variant read from the model registry: where from, e.g. "models:/NAME@champion (version 3)".
    combination: str = ""
    # ...and the backend each member is pinned to there (Combination.backends); () = unpinned.
    backends: tuple[str, ...] = ()

    @property
    def is_single(self) -> bool:
        return len(self.members) == 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VariantSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("members", "tokenizer_families", "backends"):
            if key in values:
                values[key] = tuple(values[key])
        if values.get("weights") is not None:
            values["weights"] = tuple(float(w) for w in values["weights"])
        return cls(**values)


@dataclass
class SampleRecord:
    """One sample run through one variant."""

    run_id: str
    workflow: str
    workflow_version: int
    template: str
    template_version: int
    template_hash: str
    variant: str
    sample_id: str
    inputs: dict[str, Any]
    output: str
    parsed: Any = None
    reference: Any = None
    finish_reason: str = ""
    latency_s: float = 0.0
    chars_per_s: float = 0.0
    forward_passes: int = 0
    scores: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    # When the record was made; the workflow runner sets it when the call *ended*, so the
    # call ran from `timestamp - latency_s` to `timestamp`.
    timestamp: float = field(default_factory=time.time)
    # The dataset sample's domain ("math", "code", a text file's name): groups reports.
    domain: str = ""
    # The prompt the model saw (the rendered template).
    prompt: str = ""
    # The sample's position in the dataset: a stable step for per-sample metrics (-1: unknown).
    sample_index: int = -1
    # What the decoder reports about the call: rounds, and per member forward passes,
    # prompt tokens, output tokens and tokens fed (each a {member name: count} dict).
    generation: dict[str, Any] = field(default_factory=dict)
    # How many pairs of this variant decoded side by side (their forward passes batched)
    # while its timings were taken; a batch never mixes variants (0: not recorded).
    batch_size: int = 0
    # A pair of the timed sub-sample (`chared ab --timed-samples`): it decoded alone, and an
    # A/B compares latency and chars/s on these pairs only.
    timed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SampleRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class RunRecord:
    """One workflow run: the variants it compared and where it stands."""

    run_id: str
    workflow: str
    workflow_version: int
    template: str
    template_version: int
    template_hash: str
    dataset: str
    variants: list[VariantSpec]
    package_version: str = ""
    git_commit: str = ""
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    # The samples the run covers: `--limit` (None: all), how many, and a hash of their
    # ids, inputs and references (the same hash means the same data).
    limit: int | None = None
    n_samples: int = 0
    dataset_hash: str = ""
    # Which backend runs plain model specs here (decoding/backends/auto.py), e.g. "auto: llama_cpp for GGUF".
    backend: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["variants"] = [VariantSpec.from_dict(v) for v in values.get("variants", [])]
        return cls(**values)


TIMINGS = ("latency_s", "chars_per_s", "forward_passes")


def variant_summary(records: list[SampleRecord]) -> dict[str, float]:
    """One variant's numbers, under the names every consumer shares (the CLI's JSON summary,
    the MLflow child run, and the parent run as `<variant>.<name>`): `n_samples`,
    `n_errors`, each score's mean under its own name, the timings' means, and
    `forward_passes_total`. Means are over the records without an error.
    """
    ok = [r for r in records if not r.error]
    out: dict[str, float] = {"n_samples": float(len(records)), "n_errors": float(len(records) - len(ok))}
    out.update(score_means(ok))
    for name in TIMINGS:
        mean = _finite_mean([float(getattr(r, name)) for r in ok])
        if mean is not None:
            out[name] = mean
    out["forward_passes_total"] = float(sum(r.forward_passes for r in ok))
    sizes = {r.batch_size for r in ok if r.batch_size}
    if sizes:  # the timings above were taken with this many of the variant's pairs side by side
        out["batch_size"] = float(max(sizes))
    return out


def score_means(records: list[SampleRecord]) -> dict[str, float]:
    """Each score's mean under its own name, over the given records' finite values (a score
    with none is left out). Callers pass the records without an error."""
    out: dict[str, float] = {}
    for name in sorted({name for r in records for name in r.scores}):
        mean = _finite_mean([r.scores[name] for r in records if name in r.scores])
        if mean is not None:
            out[name] = mean
    return out


def _finite_mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None
