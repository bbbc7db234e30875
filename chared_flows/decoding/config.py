"""Every decoding parameter, declared once: `DecodeFields`, and the frozen `DecodeConfig`.

The LangChain models inherit `DecodeFields` (so their fields *are* these), the workflow
YAML's `decoding:` sections and every variant / `weights_sweep` point are validated by
building a `DecodeConfig`, and `chared generate`'s flags are generated from the fields'
types, defaults and descriptions. A knob added here appears everywhere.

Subtle: pydantic's default (lax) mode would read `True` as beam width 1 and `"yes"`
as healing on; YAML and CLI values arrive typed, so ints and bools are strict, and a
float accepts an int but never a bool or a string.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chared_flows.decoding.text import text_problem
from chared_flows.errors import ConfigError

MAX_NEW_CHARS = 32_768  # far beyond the embedded models' context windows; a typo guard
MAX_BEAM_WIDTH = 65_536  # a typo guard: exact-mode tests enumerate every path with it
MAX_TEMPERATURE = 100.0
MIN_TEMPERATURE = 1e-4  # below it, logits / T overflow float64 for ordinary logit gaps
CALL_FIELDS = ("max_new_chars", "temperature", "top_p", "seed", "stop")  # may change per call


def _strict_float(value: Any, name: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, not {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, not {value!r}")
    return float(value)


class DecodeFields(BaseModel):
    """The decoding parameters as plain (mutable) fields; see DecodeConfig for the frozen object."""

    weights: tuple[float, ...] | None = Field(
        default=None,
        description="one weight per member, non-negative, not all zero (scaled to sum 1); unset: uniform",
    )
    mode: Literal["chared", "exact"] = Field(
        default="exact",
        description="exact: each member's next-byte distribution summed over its tokenizations (a beam), immune "
        "to where prompts and rounds cut tokens; chared: the paper's rounds (one forward pass per member per "
        "round, each member re-reading the text its own way), faster",
    )
    rule: Literal["mixture", "product", "adaptive"] = Field(
        default="mixture",
        description="how member distributions combine: mixture (weighted average), product (weighted geometric "
        "mean), adaptive (mixture reweighted by each member's confidence)",
    )
    max_new_chars: int = Field(
        default=256, ge=1, le=MAX_NEW_CHARS, strict=True,
        description=f"the most characters to write (1..{MAX_NEW_CHARS})",
    )
    temperature: float = Field(
        default=0.0, ge=0.0, le=MAX_TEMPERATURE,
        description="0: greedy over whole units (a round's most probable string); > 0: sample, scaling each "
        "member's token logits",
    )
    top_p: float = Field(
        default=1.0, gt=0.0, le=1.0,
        description="when sampling, keep the smallest set of whole characters holding this much probability",
    )
    seed: int | None = Field(default=None, ge=0, strict=True, description="random seed for sampling")
    stop: tuple[str, ...] = Field(default=(), description="stop strings: the text ends before the first match")
    beam_width: int = Field(
        default=8, ge=1, le=MAX_BEAM_WIDTH, strict=True,
        description="exact mode: tokenizations kept per member (1 keeps only the best)",
    )
    prune_threshold: float = Field(
        default=1e-3, ge=0.0, lt=1.0,
        description="exact mode: drop tokenizations holding less than this share of the beam's mass "
        "(0: prune by width only); chared scoring: skip round starts below it",
    )
    token_healing: bool = Field(
        default=True, strict=True,
        description="chared mode: back the prompt off to a token boundary before trailing whitespace and let "
        "the first rounds rewrite it, so a prompt ending in ' ', '\\n' or indentation reads naturally",
    )

    @field_validator("temperature", "top_p", "prune_threshold", mode="before")
    @classmethod
    def _numbers(cls, value: Any, info) -> Any:
        return _strict_float(value, info.field_name)

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float) -> float:
        if 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"temperature {value} is too small to scale logits safely; use 0 for greedy "
                             f"or at least {MIN_TEMPERATURE}")
        return value

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ValueError(f"weights must be a list of numbers like [0.5, 0.5], not {value!r}")
        values = [_strict_float(w, f"weight {i}") for i, w in enumerate(value)]
        if not values:
            raise ValueError("weights is an empty list; give one weight per member or leave it unset")
        for i, w in enumerate(values):
            if w < 0:
                raise ValueError(f"weight {i} is {w}; weights must be >= 0")
        if sum(values) <= 0:
            raise ValueError(f"weights {values} are all zero; give at least one member a positive weight")
        return tuple(values)

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError("stop must be a str or a list of str")
        out = []
        for s in value:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop string {s!r} is invalid; stop strings must be non-empty str")
            problem = text_problem(s, "stop string")  # a lone surrogate could never match the UTF-8 written
            if problem:
                raise ValueError(problem)
            if s not in out:
                out.append(s)
        return tuple(out)


class DecodeConfig(DecodeFields):
    """The frozen, validated decoding parameters of one generation (or one ensemble's defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def build(cls, **values: Any) -> "DecodeConfig":
        """Validate `values` (unset ones take defaults); a bad value raises ConfigError naming it."""
        try:
            return cls(**{k: v for k, v in values.items()})
        except ValidationError as exc:
            raise ConfigError(explain(exc)) from None

    def replace(self, **overrides: Any) -> "DecodeConfig":
        """A copy with some fields changed, validated again (None leaves a field as it is)."""
        changed = {k: v for k, v in overrides.items() if v is not None}
        if not changed:
            return self
        return DecodeConfig.build(**{**self.model_dump(), **changed})

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def ensemble_fields(self) -> dict[str, Any]:
        """What describes the ensemble (not one call): weights, mode, rule, beam, healing."""
        return self.model_dump(exclude=set(CALL_FIELDS))


def explain(exc: ValidationError) -> str:
    """A pydantic error as one line per problem: `field is value: what is wrong`."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "decoding parameters"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            fields = ", ".join(DecodeFields.model_fields)
            lines.append(f"unknown decoding parameter {where!r}; known: {fields}")
        else:
            lines.append(f"{where} is {err.get('input')!r}: {message}")
    return "; ".join(lines)
