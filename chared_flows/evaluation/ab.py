"""A/B comparison of variants over the same samples: means, paired CIs, paired tests.

Everything is paired by sample id: variant A and B are compared only on the
samples both have (without an error), which removes between-problem variance,
the dominant one on GSM8K and HumanEval.

- per-variant mean with a bootstrap CI (percentile, fixed seed);
- per (ensemble, single) pair: mean difference with a paired bootstrap CI,
  a paired sign-flip permutation test, and McNemar's exact test when both
  score columns are 0/1.
The result is a plain dict (`to_dict`) so reports and trackers need nothing
from this module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

from chared_flows.records import SampleRecord, VariantSpec

TIMING = ("latency_s", "chars_per_s", "forward_passes")


@dataclass
class VariantStat:
    variant: str
    metric: str
    n: int
    mean: float
    ci_low: float
    ci_high: float


@dataclass
class Comparison:
    ensemble: str
    single: str
    metric: str
    n: int
    diff: float
    ci_low: float
    ci_high: float
    p_permutation: float
    p_mcnemar: float | None = None


@dataclass
class ABResult:
    metrics: list[str]
    variants: list[VariantStat] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    resamples: int = 2000
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _values(records: Iterable[SampleRecord], metric: str) -> dict[str, dict[str, float]]:
    """variant -> sample_id -> value; records with an error or without the metric are left out."""
    table: dict[str, dict[str, float]] = {}
    for r in records:
        if r.error:
            continue
        value = r.scores.get(metric) if metric not in TIMING else getattr(r, metric)
        if value is None or not math.isfinite(float(value)):
            continue
        table.setdefault(r.variant, {})[r.sample_id] = float(value)
    return table


def bootstrap_mean_ci(values: np.ndarray, resamples: int = 2000, seed: int = 0, alpha: float = 0.05):
    """Percentile bootstrap CI of the mean; a single value gives a zero-width interval."""
    if len(values) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def sign_flip_p(diffs: np.ndarray, resamples: int = 2000, seed: int = 0) -> float:
    """Two-sided paired permutation test of mean(diffs) == 0 by random sign flips.

    Exact (all 2^n flips) when n <= 12; else Monte Carlo with the +1
    correction, so p is never 0.
    """
    n = len(diffs)
    if n == 0 or not np.any(diffs):
        return 1.0
    observed = abs(diffs.mean())
    if n <= 12:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        flipped = np.abs((signs * diffs).mean(axis=1))
        return float(np.mean(flipped >= observed - 1e-12))
    rng = np.random.default_rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(resamples, n))
    flipped = np.abs((signs * diffs).mean(axis=1))
    return float((np.sum(flipped >= observed - 1e-12) + 1) / (resamples + 1))


def mcnemar_exact_p(a: np.ndarray, b: np.ndarray) -> float:
    """Exact McNemar: binomial test on the discordant pairs."""
    only_a = int(np.sum((a == 1) & (b == 0)))
    only_b = int(np.sum((a == 0) & (b == 1)))
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def _is_binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0) | (values == 1)))


def metric_names(records: Iterable[SampleRecord]) -> list[str]:
    records = list(records)
    names = sorted({name for r in records for name in r.scores})
    return names + [t for t in TIMING if any(getattr(r, t) for r in records)]


def compare(
    records: list[SampleRecord],
    variants: list[VariantSpec],
    metrics: list[str] | None = None,
    resamples: int = 2000,
    seed: int = 0,
) -> ABResult:
    """Per-variant stats and every ensemble-vs-single comparison, for each metric."""
    metrics = metrics or metric_names(records)
    result = ABResult(metrics=metrics, resamples=resamples, seed=seed)
    singles = [v.name for v in variants if v.is_single]
    ensembles = [v.name for v in variants if not v.is_single]
    for metric in metrics:
        table = _values(records, metric)
        for spec in variants:
            values = np.array(list(table.get(spec.name, {}).values()))
            if len(values):
                low, high = bootstrap_mean_ci(values, resamples, seed)
                result.variants.append(VariantStat(spec.name, metric, len(values), float(values.mean()), low, high))
        for ens in ensembles:
            for single in singles:
                comparison = _paired(table.get(ens, {}), table.get(single, {}), resamples, seed)
                if comparison is not None:
                    result.comparisons.append(Comparison(ens, single, metric, **comparison))
    return result


def _paired(a: dict[str, float], b: dict[str, float], resamples: int, seed: int) -> dict[str, Any] | None:
    common = sorted(set(a) & set(b))
    if not common:
        return None
    va = np.array([a[k] for k in common])
    vb = np.array([b[k] for k in common])
    diffs = va - vb
    low, high = bootstrap_mean_ci(diffs, resamples, seed)
    return {
        "n": len(common),
        "diff": float(diffs.mean()),
        "ci_low": low,
        "ci_high": high,
        "p_permutation": sign_flip_p(diffs, resamples, seed),
        "p_mcnemar": mcnemar_exact_p(va, vb) if _is_binary(va) and _is_binary(vb) else None,
    }
