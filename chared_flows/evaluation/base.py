"""The evaluation contract: samples, datasets and scorers, found by name.

Datasets and scorers register themselves here; workflows refer to them by the
names below. Unknown names raise an error listing the known ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

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
    return _DATASETS[kind](**options)


def get_scorer(name: str, **options: Any) -> Scorer:
    if name not in _SCORERS:
        raise ConfigError(f"unknown scorer {name!r}; use one of: {', '.join(scorer_names())}")
    return _SCORERS[name](**options)


@register_dataset("inline")
def _inline(samples: list[dict[str, Any]], limit: int | None = None) -> list[Sample]:
    """Samples written in the workflow file itself: [{id?, inputs, reference?, domain?}]."""
    out = []
    for i, item in enumerate(samples[:limit] if limit else samples):
        if "inputs" not in item:
            raise ConfigError(f"inline sample {i} has no 'inputs' mapping; add inputs: {{...}}")
        out.append(
            Sample(
                id=str(item.get("id", i)),
                inputs=dict(item["inputs"]),
                reference=item.get("reference"),
                domain=str(item.get("domain", "")),
            )
        )
    return out
