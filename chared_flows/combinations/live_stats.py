"""The live report: unpaired two-sample comparisons of each challenger arm with the control arm.

Live traffic gives each user one arm, so samples are independent, not paired:
- a 0/1 metric: the difference of proportions with the Agresti-Caffo interval and its test
  (statsmodels; one method, so the interval and the p-value agree), plus Fisher's exact
  p-value as a check at small counts. subtle: statsmodels' score (Miettinen-Nurminen)
  interval fails its root search on small counts such as 6/8 vs 3/8;
- any other metric: Welch's t test and its interval (scipy), unequal variances allowed.
p-values are Holm-corrected over every comparison of the report.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np

from chared_flows.evaluation import stats as st

ALPHA = 0.05


@dataclass(frozen=True)
class Observation:
    arm: str
    metric: str
    value: float
    version: str = ""


@dataclass
class ArmStat:
    arm: str
    metric: str
    n: int
    mean: float
    version: str = ""


@dataclass
class LiveComparison:
    challenger: str
    control: str
    metric: str
    method: str
    n_challenger: int
    n_control: int
    diff: float
    ci_low: float
    ci_high: float
    p: float
    p_holm: float = float("nan")
    p_fisher: float | None = None
    verdict: str = ""


@dataclass
class LiveReport:
    experiment: str
    control: str
    arms: list[ArmStat] = field(default_factory=list)
    comparisons: list[LiveComparison] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def compare_two(challenger: np.ndarray, control: np.ndarray, alpha: float = ALPHA) -> dict:
    """diff = mean(challenger) - mean(control), its interval and p-value, by the metric's kind."""
    if st.is_binary(challenger) and st.is_binary(control):
        k1, n1, k0, n0 = int(challenger.sum()), len(challenger), int(control.sum()), len(control)
        with warnings.catch_warnings():  # subtle: statsmodels also computes an odds ratio, 1/0 at 6 of 6
            warnings.simplefilter("ignore", RuntimeWarning)
            return _proportions(k1, n1, k0, n0, alpha)
    from scipy.stats import ttest_ind

    result = ttest_ind(challenger, control, equal_var=False)
    interval = result.confidence_interval(1 - alpha)
    return {"method": "Welch t", "diff": float(challenger.mean() - control.mean()), "ci_low": float(interval.low),
            "ci_high": float(interval.high), "p": float(result.pvalue)}


def _proportions(k1: int, n1: int, k0: int, n0: int, alpha: float) -> dict:
    from scipy.stats import fisher_exact
    from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep

    low, high = confint_proportions_2indep(k1, n1, k0, n0, method="agresti-caffo", compare="diff", alpha=alpha)
    test = test_proportions_2indep(k1, n1, k0, n0, method="agresti-caffo", compare="diff")
    _, p_fisher = fisher_exact([[k1, n1 - k1], [k0, n0 - k0]])
    return {"method": "Agresti-Caffo", "diff": k1 / n1 - k0 / n0, "ci_low": float(low), "ci_high": float(high),
            "p": float(test.pvalue), "p_fisher": float(p_fisher)}


def live_report(experiment: str, observations: Iterable[Observation], control: str, alpha: float = ALPHA,
                lower_is_better: Iterable[str] = ()) -> LiveReport:
    """Per-arm means and every challenger-vs-control comparison, for each metric."""
    table: dict[tuple[str, str], list[float]] = {}
    versions: dict[str, str] = {}
    for obs in observations:
        if math.isfinite(obs.value):
            table.setdefault((obs.metric, obs.arm), []).append(float(obs.value))
            versions[obs.arm] = obs.version or versions.get(obs.arm, "")
    report = LiveReport(experiment=experiment, control=control)
    lower = set(lower_is_better)
    for (metric, arm), values in sorted(table.items()):
        report.arms.append(ArmStat(arm, metric, len(values), float(np.mean(values)), versions.get(arm, "")))
    for (metric, arm), values in sorted(table.items()):
        base = table.get((metric, control))
        if arm == control or not base or len(values) < 2 or len(base) < 2:
            continue
        stats = compare_two(np.array(values), np.array(base), alpha)
        report.comparisons.append(LiveComparison(arm, control, metric, n_challenger=len(values),
                                                 n_control=len(base), **stats))
    # the offline A/B's correction and verdicts (evaluation/stats.py), so both reports read alike
    for row, corrected in zip(report.comparisons, st.holm([c.p for c in report.comparisons], alpha)):
        row.p_holm = corrected
        row.verdict = st.verdict(row.diff, corrected, row.metric in lower, alpha)
    return report


def format_report(report: LiveReport) -> str:
    lines = [f"live A/B {report.experiment} (control: {report.control})"]
    for arm in report.arms:
        version = f" [{arm.version}]" if arm.version else ""
        lines.append(f"  {arm.metric:<16} {arm.arm:<16}{version} n={arm.n:<6} mean={arm.mean:.4g}")
    for c in report.comparisons:
        lines.append(f"  {c.metric}: {c.challenger} - {c.control} = {c.diff:+.4g} "
                     f"[{c.ci_low:+.4g}, {c.ci_high:+.4g}] ({c.method}) p={c.p:.3g} p_holm={c.p_holm:.3g}"
                     + (f" p_fisher={c.p_fisher:.3g}" if c.p_fisher is not None else "") + f" -> {c.verdict}")
    if not report.comparisons:
        lines.append("  no comparison yet: each arm needs at least 2 feedback values of a metric")
    return "\n".join(lines)
