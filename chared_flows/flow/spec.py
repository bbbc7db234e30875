"""The schema of `workflows/<name>.yaml` and its expansion into concrete variants.

A variant is one thing under comparison: a single model or an ensemble. A variant with
`weights_sweep` expands into one variant per weight setting, so
`{name: chared, models: [a, b], weights_sweep: [0.25, 0.75]}` becomes `chared-w0.25`
(weights 0.25/0.75) and `chared-w0.75` (weights 0.75/0.25).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from chared_flows.decoding.config import DecodeConfig, DecodeFields, explain
from chared_flows.prompts.yamlfile import KeyedValueError
from chared_flows.records import VariantSpec

_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"

# Where a run is logged. The local MLflow store is a SQLite file (no server), so logging
# to MLflow is the default; PromptLayer needs an API key and is opt-in.
TrackerName = Literal["mlflow", "promptlayer"]
DEFAULT_TRACKERS: tuple[str, ...] = ("mlflow",)


def _optional_decode_fields() -> dict[str, Any]:
    """Every engine decoding field, optional (None: not set here), types as the engine declares them."""
    return {name: (Optional[info.annotation], None) for name, info in DecodeFields.model_fields.items()}


# The `decoding:` section (workflow defaults and per variant): every field of the engine's
# DecodeFields, optional, plus `chat` (how members render the prompt). Types are checked
# here; values and their combination are checked by building a DecodeConfig per variant.
DecodingParams = create_model(
    "DecodingParams",
    __config__=ConfigDict(extra="forbid"),
    chat=(Optional[bool], None),
    **_optional_decode_fields(),
)


# A variant may also set these three at its top level; their types are the engine's own.
_OPTIONAL = _optional_decode_fields()
OptionalWeights, OptionalMode, OptionalRule = (_OPTIONAL[name][0] for name in ("weights", "mode", "rule"))


def _set_values(params: BaseModel) -> dict[str, Any]:
    return params.model_dump(exclude_none=True)


class VariantConfig(BaseModel):
    """One `variants:` entry as written in the file (before sweep expansion).

    Either `models` (with weights, mode, rule, decoding) or `combination: "models:/NAME@ALIAS"`:
    a combination from the model registry decodes exactly as registered (members, weights and
    its complete decoding), so a challenger is tested against what is deployed.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    models: list[str] | None = Field(default=None, min_length=1)
    combination: str | None = Field(default=None, description="a registered combination, models:/NAME@ALIAS")
    weights: OptionalWeights = None
    weights_sweep: list[float | list[float]] | None = Field(default=None, min_length=1)
    mode: OptionalMode = None
    rule: OptionalRule = None
    decoding: DecodingParams = Field(default_factory=DecodingParams)

    @model_validator(mode="after")
    def _weights_fit_models(self) -> "VariantConfig":
        if (self.models is None) == (self.combination is None):
            raise ValueError(f"variant {self.name!r} needs exactly one of models: [...] or combination: models:/NAME@ALIAS")
        if self.combination is not None:
            from chared_flows.combinations.combination import parse_uri

            parse_uri(self.combination)
            given = [k for k in ("weights", "weights_sweep", "mode", "rule") if getattr(self, k) is not None]
            given += ["decoding"] if _set_values(self.decoding) else []
            if given:
                raise ValueError(f"variant {self.name!r} sets {', '.join(given)} beside combination; a registered "
                                 "combination decodes exactly as registered: remove them")
            return self
        n = len(self.models)
        if self.decoding.weights is not None:
            raise ValueError(
                f"variant {self.name!r}: decoding.weights is not read; write the weights on the variant itself, "
                f"weights: {list(self.decoding.weights)} (one per model)"
            )
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
        elif n != 2:
            raise ValueError(
                f"variant {self.name!r}: a scalar sweep point ({point}) is the first model's weight "
                f"and only works with 2 models; with {n} models write full lists like [0.2, 0.3, 0.5]"
            )
        elif not 0.0 <= point <= 1.0:  # subtle: NaN fails this comparison too, as it should
            raise ValueError(f"variant {self.name!r}: sweep weight {point} must lie in [0, 1]")

    def names(self) -> list[str]:
        """The expanded variants' names (without resolving a combination)."""
        if self.weights_sweep is None:
            return [self.name]
        return [f"{self.name}-w{_label(p)}" for p in self.weights_sweep]

    def expand(self, defaults: BaseModel) -> list[VariantSpec]:
        """One VariantSpec per weighting, each checked by the engine's DecodeConfig."""
        if self.combination is not None:
            return [combination_variant(self.name, self.combination)]
        decoding = {**_set_values(defaults), **_set_values(self.decoding)}
        if self.mode is not None:
            decoding["mode"] = self.mode
        if self.rule is not None:
            decoding["rule"] = self.rule
        decoding.pop("weights", None)
        chat = decoding.pop("chat", None)
        if self.weights_sweep is None:
            points = [(self.name, None if self.weights is None else list(self.weights))]  # as written: a list
        else:
            points = [(f"{self.name}-w{_label(p)}", p if isinstance(p, list) else [p, 1.0 - p])
                      for p in self.weights_sweep]
        return [self._spec(name, weights, decoding, chat) for name, weights in points]

    def _spec(self, name: str, weights: list[float] | None, decoding: dict[str, Any], chat: bool | None) -> VariantSpec:
        try:
            config = DecodeConfig(weights=weights, **decoding)
        except ValidationError as exc:
            raise KeyedValueError(f"variant {name!r}: {explain(exc)}", self._origin(exc)) from None
        call = {k: v for k, v in config.model_dump().items() if k not in ("weights", "mode", "rule")}
        call["stop"] = list(call["stop"])
        if chat is not None:
            call["chat"] = chat
        return VariantSpec(
            name=name,
            members=tuple(self.models),
            weights=config.weights,
            mode=config.mode,
            rule=config.rule,
            decoding=call,
        )

    def _origin(self, exc: ValidationError) -> tuple[str, ...]:
        """Where the first bad value was written: () for this variant, ("decoding", field) for a workflow default."""
        loc = exc.errors()[0]["loc"] if exc.errors() else ()
        field = str(loc[0]) if loc else ""
        mine = set(_set_values(self.decoding)) | {"weights"}
        mine |= {name for name in ("mode", "rule") if getattr(self, name) is not None}
        return () if not field or field in mine else ("decoding", field)


def combination_variant(name: str, uri: str) -> VariantSpec:
    """The variant a registered combination decodes as; its member files are checked now."""
    from chared_flows.combinations.registry import load_combination

    registered = load_combination(uri)
    combo = registered.combination
    combo.verify(where=registered.where)
    config = combo.decoding
    call = {k: v for k, v in config.model_dump().items() if k not in ("weights", "mode", "rule")}
    call["stop"] = list(call["stop"])
    call["chat"] = combo.chat
    return VariantSpec(name=name, members=tuple(combo.members), weights=config.weights, mode=config.mode,
                       rule=config.rule, decoding=call, combination=registered.where,
                       backends=tuple(combo.backends or ()))


def _label(point: float | list[float]) -> str:
    return "-".join(f"{w:g}" for w in point) if isinstance(point, list) else f"{point:g}"


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

    @field_validator("decoding")
    @classmethod
    def _no_workflow_weights(cls, decoding: BaseModel) -> BaseModel:
        # subtle: weights are per model, and variants have different models (1, 2, 3 ...), so a
        # workflow-wide list cannot apply to all of them; it used to be dropped without a word.
        if decoding.weights is not None:
            raise KeyedValueError(
                f"weights belong to a variant, not to the workflow's decoding defaults: remove "
                f"decoding.weights {list(decoding.weights)} and write weights: [...] (one per model) "
                "or weights_sweep on each ensemble variant",
                ("decoding", "weights"),
            )
        return decoding

    @model_validator(mode="after")
    def _variant_names_unique(self) -> "WorkflowSpec":
        seen: set[str] = set()
        # subtle: expanding checks every models variant's DecodeConfig here, inside validation, so a
        # bad value is a located error; a combination is resolved (registry, files) only on resolve.
        for i, config in enumerate(self.variants):
            try:
                names = config.names() if config.combination else [v.name for v in config.expand(self.decoding)]
            except KeyedValueError as exc:  # a bad workflow default points at its own line
                raise KeyedValueError(str(exc), exc.loc or ("variants", i)) from None
            for name in names:
                if name in seen:
                    raise KeyedValueError(f"two variants are named {name!r}; variant names must be unique",
                                          ("variants", i))
                seen.add(name)
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
