"""A/B comparison of variants over the same samples: means, intervals, paired tests.

Everything is paired by sample id: variant A and B are compared only on the
samples both have (without an error), which removes between-problem variance,
the dominant one on GSM8K and HumanEval.

- per-variant mean with a 95% interval that is honest at small n and at 0 or n
  successes: Clopper-Pearson (exact binomial) for 0/1 metrics, so 0 of 50 gives
  [0, 0.071] rather than a bootstrap's [0, 0]; Student t for other metrics (no
  interval from one value);
- per (ensemble, single) pair: mean difference with a paired bootstrap CI, a paired
  sign-flip permutation test, the sign test, and McNemar's exact test when both
  score columns are 0/1 (the binomial tests come from scipy);
- per domain (when samples have more than one): each variant's mean.
The result is a plain dict (`to_dict`) so reports and trackers need nothing
from this module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

from chared_flows.errors import MissingExtraError
from chared_flows.records import SampleRecord, VariantSpec

TIMING = ("latency_s", "chars_per_s", "forward_passes")
# Metrics where a smaller value is the better one (reports say so next to the numbers).
LOWER_IS_BETTER = frozenset({"bits_per_char", "bits_per_byte", "latency_s", "forward_passes"})
# Metrics that cannot be negative: a t interval of their mean is cut at 0 (3 texts of very
# different bits per character gave [-0.02, 2.03], a range no mean of bits can reach).
NON_NEGATIVE = frozenset({"bits_per_char", "bits_per_byte", *TIMING})


def _scipy_stats():
    try:
        from scipy import stats
    except ImportError as exc:
        raise MissingExtraError("scipy", "eval") from exc
    return stats


@dataclass
class VariantStat:
    variant: str
    metric: str
    n: int
    mean: float
    ci_low: float
    ci_high: float
    ci_method: str = ""  # "exact" (Clopper-Pearson), "t", or "" when n is too small


@dataclass
class DomainStat:
    variant: str
    metric: str
    domain: str
    n: int
    mean: float


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
    p_sign: float | None = None
    wins: int = 0  # pairs where the ensemble's value is higher
    losses: int = 0  # pairs where it is lower


@dataclass
class ABResult:
    metrics: list[str]
    variants: list[VariantStat] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    domains: list[DomainStat] = field(default_factory=list)
    lower_is_better: list[str] = field(default_factory=list)
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


def binomial_ci(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval of a proportion: never zero-width, even at 0 or n of n."""
    if n == 0:
        return math.nan, math.nan
    ci = _scipy_stats().binomtest(int(successes), int(n)).proportion_ci(1 - alpha, method="exact")
    return float(ci.low), float(ci.high)


def t_mean_ci(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Student t interval of the mean; no interval (NaN) from fewer than 2 values."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    mean = float(values.mean())
    half = float(_scipy_stats().t.ppf(1 - alpha / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return mean - half, mean + half


def mean_ci(values: np.ndarray, alpha: float = 0.05, binary: bool | None = None,
            non_negative: bool = False) -> tuple[float, float, str]:
    """(low, high, method) for one variant's mean: exact binomial for a 0/1 score, else t.

    `binary=None` decides from the values; counts and timings pass False (a column of
    forward-pass counts that happen to be all 1 is not a proportion). `non_negative`
    cuts a t interval at 0 (the method then reads "t, cut at 0").
    """
    if binary is None:
        binary = bool(len(values)) and _is_binary(values)
    if binary:
        return (*binomial_ci(int(values.sum()), len(values), alpha), "exact")
    low, high = t_mean_ci(values, alpha)
    if len(values) < 2:
        return low, high, ""
    if non_negative and low < 0:
        return 0.0, high, "t, cut at 0"
    return low, high, "t"


def bootstrap_mean_ci(values: np.ndarray, resamples: int = 2000, seed: int = 0, alpha: float = 0.05):
    """Percentile bootstrap CI of the mean (paired differences); no interval (NaN) from one value."""
    if len(values) < 2:
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
    """Exact McNemar: a two-sided binomial test (scipy) on the discordant pairs."""
    only_a = int(np.sum((a == 1) & (b == 0)))
    only_b = int(np.sum((a == 0) & (b == 1)))
    if only_a + only_b == 0:
        return 1.0
    return float(_scipy_stats().binomtest(only_a, only_a + only_b, 0.5).pvalue)


def sign_test_p(diffs: np.ndarray) -> float:
    """Two-sided sign test (scipy's binomial test on the non-zero differences)."""
    wins, losses = int(np.sum(diffs > 0)), int(np.sum(diffs < 0))
    if wins + losses == 0:
        return 1.0
    return float(_scipy_stats().binomtest(wins, wins + losses, 0.5).pvalue)


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
    result = ABResult(metrics=metrics, resamples=resamples, seed=seed,
                      lower_is_better=[m for m in metrics if m in LOWER_IS_BETTER])
    singles = [v.name for v in variants if v.is_single]
    ensembles = [v.name for v in variants if not v.is_single]
    for metric in metrics:
        table = _values(records, metric)
        for spec in variants:
            values = np.array(list(table.get(spec.name, {}).values()))
            if len(values):
                low, high, method = mean_ci(values, binary=None if metric not in TIMING else False,
                                            non_negative=metric in NON_NEGATIVE)
                result.variants.append(
                    VariantStat(spec.name, metric, len(values), float(values.mean()), low, high, method)
                )
        for ens in ensembles:
            for single in singles:
                comparison = _paired(table.get(ens, {}), table.get(single, {}), resamples, seed)
                if comparison is not None:
                    result.comparisons.append(Comparison(ens, single, metric, **comparison))
        result.domains += _by_domain(records, variants, metric, table)
    return result


def _by_domain(records: list[SampleRecord], variants: list[VariantSpec], metric: str,
               table: dict[str, dict[str, float]]) -> list[DomainStat]:
    """Each variant's mean per sample domain; empty unless the samples span 2+ domains."""
    domain_of = {r.sample_id: r.domain or "-" for r in records}
    if len(set(domain_of.values())) < 2:
        return []
    out = []
    for domain in sorted(set(domain_of.values())):
        for spec in variants:
            values = [v for sid, v in table.get(spec.name, {}).items() if domain_of.get(sid) == domain]
            if values:
                out.append(DomainStat(spec.name, metric, domain, len(values), float(np.mean(values))))
    return out


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
        "p_sign": sign_test_p(diffs),
        "wins": int(np.sum(diffs > 0)),
        "losses": int(np.sum(diffs < 0)),
    }
