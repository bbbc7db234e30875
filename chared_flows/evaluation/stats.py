"""Paired comparisons whose interval and p-value come from one method, so they cannot disagree.

- Continuous metrics (bits per character, latency, a score in [0, 1]): the paired t test on
  the differences (scipy's `ttest_1samp` against 0) and *its own* confidence interval: the
  95% interval excludes 0 exactly when p < 0.05. The t interval is used at every n (no
  bootstrap: at the small n of a quick A/B a percentile bootstrap is too narrow, e.g.
  [-0.221, -0.069] at n = 3 where the exact permutation p is 0.25).
- 0/1 metrics (exact match, pass@1): exact McNemar, i.e. scipy's binomial test of the
  ensemble's share among the m discordant pairs against 1/2, and the Clopper-Pearson
  interval of that same share [L, U] (its inversion: it excludes 1/2 exactly when p < 0.05,
  the binomial at 1/2 being symmetric). The difference in success rate is (wins - losses)/n
  = m (2 theta - 1)/n, so its interval is [m (2L - 1)/n, m (2U - 1)/n], conditional on m.
  With no discordant pair (m = 0) p is 1 and the interval is +-u, u the Clopper-Pearson
  upper bound of 0 discordant pairs in n: the honest "no difference seen, but this n
  cannot rule out one of size u" instead of a zero-width [0, 0].
- Power (statsmodels' `TTestPower`, two-sided, alpha 0.05, power 0.8): the minimum
  detectable effect at this n is d* x sd(differences) with d* the standardised effect this
  n detects; the n a stated effect needs is solved the same way. For 0/1 metrics this
  treats the -1/0/1 differences with the t approximation (stated in the report).
- Multiple comparisons: Holm (statsmodels' `multipletests`) over the comparisons of one
  family; the verdict uses the corrected p, the interval and the raw p stay the pair that
  agree with each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from chared_flows.errors import MissingExtraError

ALPHA = 0.05
POWER = 0.8


def _scipy_stats():
    try:
        from scipy import stats
    except ImportError as exc:
        raise MissingExtraError("scipy", "eval") from exc
    return stats


def _statsmodels():
    try:
        from statsmodels.stats import multitest, power
    except ImportError as exc:
        raise MissingExtraError("statsmodels", "eval") from exc
    return multitest, power


@dataclass(frozen=True)
class PairedTest:
    """One paired comparison: mean difference, its interval and p-value from `method`."""

    n: int
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    method: str  # "paired t" | "exact McNemar" | "" (fewer than 2 pairs)

    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def is_binary(values: np.ndarray) -> bool:
    return bool(len(values)) and bool(np.all((values == 0) | (values == 1)))


def paired_test(a: np.ndarray, b: np.ndarray, binary: bool | None = None, alpha: float = ALPHA) -> PairedTest:
    """a - b on the same samples: exact McNemar for two 0/1 columns, paired t otherwise."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if binary is None:
        binary = is_binary(a) and is_binary(b)
    if binary:
        return mcnemar_test(a, b, alpha)
    return paired_t_test(a - b, alpha)


def paired_t_test(diffs: np.ndarray, alpha: float = ALPHA) -> PairedTest:
    n = len(diffs)
    mean = float(diffs.mean()) if n else math.nan
    if n < 2:
        return PairedTest(n, mean, math.nan, math.nan, math.nan, "")
    if float(np.ptp(diffs)) <= 1e-12 * max(1.0, abs(mean)):  # float noise of a constant shift counts as none
        # subtle: zero spread makes t infinite (or 0/0); scipy returns NaN. The limit is
        # the honest answer: identical differences are certain at this n, a mean of 0 is p = 1.
        return PairedTest(n, mean, mean, mean, 1.0 if mean == 0 else 0.0, "paired t")
    res = _scipy_stats().ttest_1samp(diffs, 0.0)
    ci = res.confidence_interval(1 - alpha)
    return PairedTest(n, mean, float(ci.low), float(ci.high), float(res.pvalue), "paired t")


def mcnemar_test(a: np.ndarray, b: np.ndarray, alpha: float = ALPHA) -> PairedTest:
    n = len(a)
    if n < 2:
        return PairedTest(n, float((a - b).mean()) if n else math.nan, math.nan, math.nan, math.nan, "")
    wins = int(np.sum((a == 1) & (b == 0)))
    losses = int(np.sum((a == 0) & (b == 1)))
    m = wins + losses
    if m == 0:
        upper = 1.0 - (alpha / 2) ** (1.0 / n)  # Clopper-Pearson upper bound of 0 in n
        return PairedTest(n, 0.0, -upper, upper, 1.0, "exact McNemar")
    test = _scipy_stats().binomtest(wins, m, 0.5)
    share = test.proportion_ci(1 - alpha, method="exact")
    low, high = m * (2 * share.low - 1) / n, m * (2 * share.high - 1) / n
    return PairedTest(n, (wins - losses) / n, float(low), float(high), float(test.pvalue), "exact McNemar")


def holm(p_values: list[float], alpha: float = ALPHA) -> list[float]:
    """Holm-corrected p-values; NaN (no test) stays NaN and does not count as a comparison."""
    finite = [i for i, p in enumerate(p_values) if math.isfinite(p)]
    out = [math.nan] * len(p_values)
    if finite:
        multitest, _ = _statsmodels()
        corrected = multitest.multipletests([p_values[i] for i in finite], alpha=alpha, method="holm")[1]
        for i, p in zip(finite, corrected):
            out[i] = float(p)
    return out


def _power_solver():
    _, power = _statsmodels()
    return power.TTestPower()


def minimum_detectable_effect(diffs: np.ndarray, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest |mean difference| this n detects with `power` (paired t); None without spread."""
    n = len(diffs)
    sd = float(np.std(diffs, ddof=1)) if n >= 2 else 0.0
    if n < 2 or sd == 0.0:
        return None
    try:
        d = _power_solver().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power,
                                        alternative="two-sided")
    except (ValueError, RuntimeError, ArithmeticError):
        return None
    d = float(np.atleast_1d(d)[0])
    return d * sd if math.isfinite(d) else None


def samples_needed(diffs: np.ndarray, effect: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Pairs needed to detect a mean difference of `effect` with `power`, at this spread; None without one."""
    n = len(diffs)
    sd = float(np.std(diffs, ddof=1)) if n >= 2 else 0.0
    if n < 2 or sd == 0.0 or not effect:
        return None
    try:
        needed = _power_solver().solve_power(effect_size=abs(effect) / sd, nobs=None, alpha=alpha, power=power,
                                             alternative="two-sided")
    except (ValueError, RuntimeError, ArithmeticError):
        return None
    needed = float(np.atleast_1d(needed)[0])
    return max(2, math.ceil(needed)) if math.isfinite(needed) else None


def verdict(diff: float, p_corrected: float, lower_is_better: bool, alpha: float = ALPHA) -> str:
    """'better' / 'worse' (for the first of the pair) / 'no detectable difference' / 'too few pairs'."""
    if not math.isfinite(p_corrected):
        return "too few pairs"
    if p_corrected >= alpha or diff == 0:
        return "no detectable difference"
    return "better" if (diff < 0) == lower_is_better else "worse"
