"""The schema of `workflows/<name>.yaml` and its expansion into concrete variants.

A variant is one thing under comparison: a single model or an ensemble. A variant with
`weights_sweep` expands into one variant per weight setting, so
`{name: chared, models: [a, b], weights_sweep: [0.25, 0.75]}` becomes `chared-w0.25`
(weights 0.25/0.75) and `chared-w0.75` (weights 0.75/0.25).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from chared_flows.records import VariantSpec

_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"

# Where a run is logged. The local MLflow store is a SQLite file (no server), so logging
# to MLflow is the default; PromptLayer needs an API key and is opt-in.
TrackerName = Literal["mlflow", "promptlayer"]
DEFAULT_TRACKERS: tuple[str, ...] = ("mlflow",)


class DecodingParams(BaseModel):
    """Decoding parameters a variant (or the workflow's defaults) may set."""

    model_config = ConfigDict(extra="forbid")

    max_new_chars: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] | None = None
    chat: bool | None = None

    def set_values(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class VariantConfig(BaseModel):
    """One `variants:` entry as written in the file (before sweep expansion)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    models: list[str] = Field(min_length=1)
    weights: list[float] | None = None
    weights_sweep: list[float | list[float]] | None = Field(default=None, min_length=1)
    mode: str = "chared"
    rule: str = "mixture"
    decoding: DecodingParams = Field(default_factory=DecodingParams)

    @field_validator("weights")
    @classmethod
    def _weights_valid(cls, weights: list[float] | None) -> list[float] | None:
        # The engine's own check, so a bad value fails early with the engine's message.
        from chared_flows.decoding.combine import check_weights

        return check_weights(weights)

    @model_validator(mode="after")
    def _weights_fit_models(self) -> "VariantConfig":
        n = len(self.models)
        if self.weights is not None and len(self.weights) != n:
            raise ValueError(
                f"variant {self.name!r} has {len(self.weights)} weights for {n} models "
                f"({', '.join(self.models)}); give exactly one weight per model"
            )
        if self.weights is not None and self.weights_sweep is not None:
            raise ValueError(f"variant {self.name!r} sets both weights and weights_sweep; keep one")
        if self.weights_sweep is not None:
            if n == 1:
                raise ValueError(f"variant {self.name!r} sweeps weights over a single model; remove weights_sweep")
            for point in self.weights_sweep:
                self._check_sweep_point(point, n)
        return self

    def _check_sweep_point(self, point: float | list[float], n: int) -> None:
        if isinstance(point, list):
            if len(point) != n:
                raise ValueError(
                    f"variant {self.name!r}: sweep point {point} has {len(point)} weights for {n} models"
                )
            if any(w < 0 for w in point) or sum(point) <= 0:
                raise ValueError(f"variant {self.name!r}: sweep point {point} needs non-negative weights")
        elif n != 2:
            raise ValueError(
                f"variant {self.name!r}: a scalar sweep point ({point}) is the first model's weight "
                f"and only works with 2 models; with {n} models write full lists like [0.2, 0.3, 0.5]"
            )
        elif not 0.0 <= point <= 1.0:
            raise ValueError(f"variant {self.name!r}: sweep weight {point} must lie in [0, 1]")

    def expand(self, defaults: DecodingParams) -> list[VariantSpec]:
        decoding = {**defaults.set_values(), **self.decoding.set_values()}
        make = lambda name, weights: VariantSpec(  # noqa: E731
            name=name,
            members=tuple(self.models),
            weights=None if weights is None else tuple(float(w) for w in weights),
            mode=self.mode,
            rule=self.rule,
            decoding=dict(decoding),
        )
        if self.weights_sweep is None:
            return [make(self.name, self.weights)]
        out = []
        for point in self.weights_sweep:
            weights = point if isinstance(point, list) else [point, 1.0 - point]
            label = "-".join(f"{w:g}" for w in point) if isinstance(point, list) else f"{point:g}"
            out.append(make(f"{self.name}-w{label}", weights))
        return out


class ScorerRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class WorkflowSpec(BaseModel):
    """The content of `workflows/<name>.yaml`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    version: int = Field(ge=1)
    description: str = ""
    template: str = Field(description="template reference, NAME@N (or NAME@latest)")
    dataset: dict[str, Any]
    scorers: list[str | ScorerRef] = Field(default_factory=list)
    parser: str = "text"
    decoding: DecodingParams = Field(default_factory=DecodingParams)
    variants: list[VariantConfig] = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)
    trackers: list[TrackerName] = Field(
        default_factory=lambda: list(DEFAULT_TRACKERS),
        description="where runs are logged: mlflow, promptlayer; [] logs nowhere (CLI: --tracker, --no-track)",
    )

    @field_validator("dataset")
    @classmethod
    def _dataset_has_kind(cls, ref: dict[str, Any]) -> dict[str, Any]:
        if "kind" not in ref:
            raise ValueError("dataset needs a 'kind' key, e.g. {kind: gsm_symbolic, n: 50}")
        return ref

    @model_validator(mode="after")
    def _variant_names_unique(self) -> "WorkflowSpec":
        seen: set[str] = set()
        for variant in self.expanded_variants():
            if variant.name in seen:
                raise ValueError(f"two variants are named {variant.name!r}; variant names must be unique")
            seen.add(variant.name)
        return self

    def expanded_variants(self) -> list[VariantSpec]:
        return [v for config in self.variants for v in config.expand(self.decoding)]

    def scorer_refs(self) -> list[ScorerRef]:
        return [ScorerRef(name=s) if isinstance(s, str) else s for s in self.scorers]

    @property
    def content_hash(self) -> str:
        # subtle: where a run is logged does not change its results, so `trackers` is left
        # out; a run can resume with other trackers without "different content" errors.
        canonical = json.dumps(self.model_dump(mode="json", exclude={"trackers"}), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
