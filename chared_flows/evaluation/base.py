"""The evaluation contract: samples, datasets and scorers, found by name.

Datasets and scorers register themselves here; workflows refer to them by the
names below. Unknown names raise an error listing the known ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from pydantic import ValidationError, validate_call

from chared_flows.errors import ConfigError


@dataclass(frozen=True)
class Sample:
    """One evaluation item: template inputs, the expected answer, a domain tag."""

    id: str
    inputs: dict[str, Any]
    reference: Any = None
    domain: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Scorer(Protocol):
    name: str

    def score(self, sample: Sample, output: str, parsed: Any) -> dict[str, float]:
        """Return metric name -> value for one output (higher is better unless named *_s)."""

    # Optional: `check_sample(sample) -> None` raises a ConfigError if the scorer cannot score
    # this sample at all (pass_at_1 without HumanEval tests); run and validate call it on every
    # sample before any model loads.


DatasetLoader = Callable[..., list[Sample]]
ScorerFactory = Callable[..., Scorer]

_DATASETS: dict[str, DatasetLoader] = {}
_SCORERS: dict[str, ScorerFactory] = {}


def register_dataset(kind: str) -> Callable[[DatasetLoader], DatasetLoader]:
    def add(loader: DatasetLoader) -> DatasetLoader:
        _DATASETS[kind] = loader
        return loader

    return add


def register_scorer(name: str) -> Callable[[ScorerFactory], ScorerFactory]:
    def add(factory: ScorerFactory) -> ScorerFactory:
        _SCORERS[name] = factory
        return factory

    return add


def dataset_kinds() -> list[str]:
    return sorted(_DATASETS)


def scorer_names() -> list[str]:
    return sorted(_SCORERS)


def load_dataset(ref: dict[str, Any]) -> list[Sample]:
    """Load a dataset from a reference such as {"kind": "gsm8k_jsonl", "path": ..., "limit": 50}."""
    options = dict(ref)
    kind = options.pop("kind", None)
    if kind not in _DATASETS:
        raise ConfigError(
            f"unknown dataset kind {kind!r}; use one of: {', '.join(dataset_kinds())}"
        )
    # subtle: the loaders' annotations are the option schema; calling through validate_call
    # turns `n: -1`, `chunk_chars: abc` or a misspelt option into one line instead of a
    # TypeError deep inside the loader.
    try:
        return validate_call(_DATASETS[kind])(**options)
    except ValidationError as exc:
        raise ConfigError(describe_options(kind, _DATASETS[kind], exc)) from None


def describe_options(kind: str, loader: DatasetLoader, exc: ValidationError) -> str:
    """`option 'n' is -1: Input should be greater than or equal to 1`, one clause per problem."""
    import inspect

    known = [name for name in inspect.signature(loader).parameters]
    problems = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"])
        if err["type"] == "unexpected_keyword_argument":
            problems.append(f"unknown option {where!r} for kind {kind!r}; it takes: {', '.join(known)}")
        elif err["type"] == "missing_argument":
            problems.append(f"kind {kind!r} needs the option {where!r}")
        else:
            problems.append(f"option {where} is {err.get('input')!r}: {err['msg']}")
    return "; ".join(problems)


def get_scorer(name: str, **options: Any) -> Scorer:
    if name not in _SCORERS:
        raise ConfigError(f"unknown scorer {name!r}; use one of: {', '.join(scorer_names())}")
    return _SCORERS[name](**options)


@register_dataset("inline")
def _inline(samples: list[dict[str, Any]], limit: int | None = None) -> list[Sample]:
    """Samples written in the workflow file itself: [{id?, inputs, reference?, domain?}]."""
    out = []
    for i, item in enumerate(samples[:limit] if limit else samples):
        if not isinstance(item, Mapping):
            raise ConfigError(f"inline sample {i} is {item!r}, not a mapping; write it as {{id: ..., inputs: {{...}}}}")
        if not isinstance(item.get("inputs"), Mapping):
            got = f"is {item['inputs']!r}" if "inputs" in item else "is missing"
            raise ConfigError(f"inline sample {i}: 'inputs' {got}; give a mapping of template variables, e.g. "
                              "inputs: {question: ...}")
        out.append(
            Sample(
                id=str(item.get("id", i)),
                inputs=dict(item["inputs"]),
                reference=item.get("reference"),
                domain=str(item.get("domain", "")),
            )
        )
    return out
