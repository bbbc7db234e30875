"""A/B comparison of variants over the same samples: means, intervals, paired tests, verdicts.

Everything is paired by sample id: variant A and B are compared only on the
samples both have (without an error), which removes between-problem variance,
the dominant one on GSM8K and HumanEval.

- per-variant mean with a 95% interval that is honest at small n and at 0 or n
  successes: Clopper-Pearson (exact binomial) for 0/1 metrics, so 0 of 50 gives
  [0, 0.071] rather than a bootstrap's [0, 0]; Student t for other metrics (no
  interval from one value);
- per (ensemble, single) pair: the mean difference with an interval and a p-value from
  one method (stats.py: paired t, or exact McNemar for two 0/1 columns), so the 95%
  interval excludes 0 exactly when p < 0.05; Holm's correction over each family of
  comparisons (the quality metrics; the timings); a verdict from the corrected p; where
  nothing is detected, the minimum detectable effect at this n and the n a stated effect
  needs (power 0.8);
- per domain (when samples have more than one): each variant's mean.
The result is a plain dict (`to_dict`) so reports and trackers need nothing
from this module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

from chared_flows.evaluation import stats as st
from chared_flows.records import SampleRecord, VariantSpec

TIMING = ("latency_s", "chars_per_s", "forward_passes")
# Timings that change with the number of pairs decoding side by side (forward passes do not).
BATCH_SENSITIVE = ("latency_s", "chars_per_s")
# Metrics where a smaller value is the better one (reports say so next to the numbers).
LOWER_IS_BETTER = frozenset({"bits_per_char", "bits_per_byte", "latency_s", "forward_passes"})
# Metrics that cannot be negative: a t interval of their mean is cut at 0 (3 texts of very
# different bits per character gave [-0.02, 2.03], a range no mean of bits can reach).
NON_NEGATIVE = frozenset({"bits_per_char", "bits_per_byte", *TIMING})
# The effect a team wants to be able to see when it states none (--effect METRIC=VALUE):
# 5 points of a 0/1 metric, else 5% of the best single model's mean.
DEFAULT_BINARY_EFFECT = 0.05
DEFAULT_RELATIVE_EFFECT = 0.05


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
    """Ensemble minus single on the samples both have; interval and p from `method` (stats.py)."""

    ensemble: str
    single: str
    metric: str
    n: int
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    method: str
    p_holm: float = math.nan
    verdict: str = ""  # for the ensemble: better | worse | no detectable difference | too few pairs
    vs_best_single: bool = False  # the single with the best mean on this metric
    wins: int = 0  # pairs where the ensemble's value is higher
    losses: int = 0  # pairs where it is lower
    mde: float | None = None  # smallest |diff| this n detects with power 0.8
    effect: float | None = None  # the stated effect ...
    n_needed: int | None = None  # ... and the pairs it needs for power 0.8


@dataclass
class ABResult:
    metrics: list[str]
    variants: list[VariantStat] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    domains: list[DomainStat] = field(default_factory=list)
    lower_is_better: list[str] = field(default_factory=list)
    alpha: float = st.ALPHA
    power: float = st.POWER
    correction: str = "holm"
    families: dict[str, list[str]] = field(default_factory=dict)  # Holm family -> its metrics
    # The pairs decoding at once behind each variant's timings: {variant: [batch sizes seen]}.
    batch_sizes: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _values(records: Iterable[SampleRecord], metric: str) -> dict[str, dict[str, float]]:
    """variant -> sample_id -> value; records with an error or without the metric are left out.

    Latency and chars/s come from the timed sub-sample of `chared ab` (pairs that decoded
    alone, marked `timed`) wherever a variant has one: latency ratios change with the batch
    size. subtle: not from every pair at batch size 1: a last chunk of one sample or a
    retried pair also decodes alone, and one such pair would stand for the whole variant.
    """
    records = [r for r in records if not r.error]
    timed = {r.variant for r in records if r.timed}
    table: dict[str, dict[str, float]] = {}
    for r in records:
        if metric in BATCH_SENSITIVE and r.variant in timed and not r.timed:
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
    ci = st._scipy_stats().binomtest(int(successes), int(n)).proportion_ci(1 - alpha, method="exact")
    return float(ci.low), float(ci.high)


def t_mean_ci(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Student t interval of the mean; no interval (NaN) from fewer than 2 values."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    mean = float(values.mean())
    half = float(st._scipy_stats().t.ppf(1 - alpha / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return mean - half, mean + half


def mean_ci(values: np.ndarray, alpha: float = 0.05, binary: bool | None = None,
            non_negative: bool = False) -> tuple[float, float, str]:
    """(low, high, method) for one variant's mean: exact binomial for a 0/1 score, else t.

    `binary=None` decides from the values; counts and timings pass False (a column of
    forward-pass counts that happen to be all 1 is not a proportion). `non_negative`
    cuts a t interval at 0 (the method then reads "t, cut at 0").
    """
    if binary is None:
        binary = st.is_binary(values)
    if binary:
        return (*binomial_ci(int(values.sum()), len(values), alpha), "exact")
    low, high = t_mean_ci(values, alpha)
    if len(values) < 2:
        return low, high, ""
    if non_negative and low < 0:
        return 0.0, high, "t, cut at 0"
    return low, high, "t"


def metric_names(records: Iterable[SampleRecord]) -> list[str]:
    records = list(records)
    names = sorted({name for r in records for name in r.scores})
    return names + [t for t in TIMING if any(getattr(r, t) for r in records)]


def compare(
    records: list[SampleRecord],
    variants: list[VariantSpec],
    metrics: list[str] | None = None,
    effects: dict[str, float] | None = None,
) -> ABResult:
    """Per-variant stats and every ensemble-vs-single comparison, for each metric, with verdicts.

    `effects` states, per metric, the difference a team wants to detect (for the
    samples-needed column); unstated metrics get DEFAULT_*_EFFECT.
    """
    metrics = metrics or metric_names(records)
    effects = dict(effects or {})
    result = ABResult(metrics=metrics, lower_is_better=[m for m in metrics if m in LOWER_IS_BETTER],
                      batch_sizes=_batch_sizes(records))
    singles = [v.name for v in variants if v.is_single]
    ensembles = [v.name for v in variants if not v.is_single]
    for metric in metrics:
        table = _values(records, metric)
        stats = _variant_stats(table, variants, metric)
        result.variants += stats
        best = _best_single(stats, singles, metric in LOWER_IS_BETTER)
        means = {v.variant: v.mean for v in stats}
        for ens in ensembles:
            for single in singles:
                effect = _stated_effect(effects.get(metric), means.get(single), table, metric)
                comparison = _paired(table.get(ens, {}), table.get(single, {}), metric, effect)
                if comparison is not None:
                    comparison.ensemble, comparison.single = ens, single
                    comparison.vs_best_single = single == best
                    result.comparisons.append(comparison)
        result.domains += _by_domain(records, variants, metric, table)
    result.families = _correct(result.comparisons, metrics)
    return result


def _variant_stats(table: dict[str, dict[str, float]], variants: list[VariantSpec], metric: str) -> list[VariantStat]:
    out = []
    for spec in variants:
        values = np.array(list(table.get(spec.name, {}).values()))
        if len(values):
            low, high, method = mean_ci(values, binary=None if metric not in TIMING else False,
                                        non_negative=metric in NON_NEGATIVE)
            out.append(VariantStat(spec.name, metric, len(values), float(values.mean()), low, high, method))
    return out


def _best_single(stats: list[VariantStat], singles: list[str], lower_is_better: bool) -> str | None:
    candidates = [(s.mean, s.variant) for s in stats if s.variant in singles and math.isfinite(s.mean)]
    if not candidates:
        return None
    return (min if lower_is_better else max)(candidates)[1]


def _stated_effect(stated: float | None, single_mean: float | None, table: dict[str, dict[str, float]],
                   metric: str) -> float | None:
    """The effect to size samples for: the stated one, else 5 points (0/1) or 5% of the single's mean."""
    if stated is not None:
        return float(stated)
    values = np.array([v for by_sample in table.values() for v in by_sample.values()])
    if metric not in TIMING and st.is_binary(values):
        return DEFAULT_BINARY_EFFECT
    if single_mean is None or not math.isfinite(single_mean) or single_mean == 0:
        return None
    return DEFAULT_RELATIVE_EFFECT * abs(single_mean)


def _paired(a: dict[str, float], b: dict[str, float], metric: str, effect: float | None) -> Comparison | None:
    common = sorted(set(a) & set(b))
    if not common:
        return None
    va = np.array([a[k] for k in common])
    vb = np.array([b[k] for k in common])
    test = st.paired_test(va, vb, binary=False if metric in TIMING else None)
    diffs = va - vb
    return Comparison(
        ensemble="", single="", metric=metric, n=test.n, diff=test.diff, ci_low=test.ci_low, ci_high=test.ci_high,
        p_value=test.p_value, method=test.method,
        wins=int(np.sum(diffs > 0)), losses=int(np.sum(diffs < 0)),
        mde=st.minimum_detectable_effect(diffs), effect=effect,
        n_needed=st.samples_needed(diffs, effect) if effect else None,
    )


def _correct(comparisons: list[Comparison], metrics: list[str]) -> dict[str, list[str]]:
    """Holm over each family (quality metrics; timings), then each comparison's verdict."""
    families = {"quality": [m for m in metrics if m not in TIMING], "timing": [m for m in metrics if m in TIMING]}
    for names in families.values():
        members = [c for c in comparisons if c.metric in names]
        for c, p in zip(members, st.holm([c.p_value for c in members])):
            c.p_holm = p
            c.verdict = st.verdict(c.diff, p, c.metric in LOWER_IS_BETTER)
    return {k: v for k, v in families.items() if v}


def _batch_sizes(records: list[SampleRecord]) -> dict[str, list[int]]:
    seen: dict[str, set[int]] = {}
    for r in records:
        if not r.error and r.batch_size:
            seen.setdefault(r.variant, set()).add(int(r.batch_size))
    return {k: sorted(v) for k, v in seen.items()}


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


def summary_entries(ab: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What trackers log per variant beside its means: each comparison's numbers and verdict.

    Keys are the child run's own (`vs.<single>.<metric>.diff`, `.ci_low`, `.ci_high`,
    `.p_value`, `.p_holm`; the tag `verdict.vs.<single>.<metric>`); the parent run holds the
    same under `<ensemble>.` + key, so MLflow's compare view lines them up. Each variant's
    mean interval is `<metric>.ci_low` / `<metric>.ci_high`.
    """
    out: dict[str, dict[str, Any]] = {}
    for s in ab["variants"]:
        entry = out.setdefault(s["variant"], {})
        entry[f"{s['metric']}.ci_low"], entry[f"{s['metric']}.ci_high"] = s["ci_low"], s["ci_high"]
        if s["metric"] in BATCH_SENSITIVE:  # the mean its interval belongs to (the timed pairs')
            entry[s["metric"]] = s["mean"]
    for c in ab["comparisons"]:
        entry = out.setdefault(c["ensemble"], {})
        key = f"vs.{c['single']}.{c['metric']}"
        for name in ("diff", "ci_low", "ci_high", "p_value", "p_holm"):
            entry[f"{key}.{name}"] = c[name]
        entry[f"verdict.{key}"] = c["verdict"]
    return out
