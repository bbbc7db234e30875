"""The A/B statistics agree with themselves: one method gives the interval and the p-value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chared_flows.evaluation import stats as st
from chared_flows.evaluation.ab import compare, summary_entries
from chared_flows.records import SampleRecord, VariantSpec

VARIANTS = [VariantSpec("a", ("a",)), VariantSpec("b", ("b",)), VariantSpec("ens", ("a", "b"), (0.5, 0.5))]


def rec(variant, sample, value, metric="bits_per_char", **kw):
    return SampleRecord("r", "w", 1, "t", 1, "h", variant, sample, {}, "", scores={metric: value}, **kw)


def _datasets(count: int, seed: int = 7):
    """Synthetic paired datasets: continuous and 0/1, n from 2 to 60, some with no difference at all."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        n = int(rng.choice([2, 3, 4, 5, 8, 12, 20, 35, 60]))
        if i % 2:
            a = (rng.random(n) < rng.uniform(0.05, 0.95)).astype(float)
            b = (rng.random(n) < rng.uniform(0.05, 0.95)).astype(float)
            if i % 11 == 1:
                b = a.copy()
        else:
            b = rng.normal(1.0, 0.3, n)
            a = b + rng.normal(rng.choice([0.0, 0.05, 0.3]), rng.uniform(0.01, 0.5), n)
            if i % 13 == 0:
                a = b.copy()
            if i % 17 == 0:
                a = b + 0.1  # a constant shift: zero spread
        yield a, b


def test_a_95_interval_excludes_zero_exactly_when_p_is_below_005_on_1200_datasets():
    seen = {"paired t": [0, 0], "exact McNemar": [0, 0]}
    for a, b in _datasets(1200):
        test = st.paired_test(a, b)
        assert test.method in seen and math.isfinite(test.p_value)
        assert test.ci_low <= test.diff <= test.ci_high, test
        assert test.excludes_zero() == (test.p_value < 0.05), (a, b, test)
        seen[test.method][test.p_value < 0.05] += 1
    # both methods, both outcomes were exercised (the property is not vacuous)
    assert all(n > 20 for counts in seen.values() for n in counts), seen


def test_the_issues_three_pairs_no_longer_disagree():
    # the issue: on 3 paired texts a bootstrap interval [-0.221, -0.069] (excluding 0) stood
    # beside p = 0.25; the paired t interval of such data includes 0 and its p agrees
    test = st.paired_t_test(np.array([-0.221, -0.069, -0.145]))
    assert test.ci_low == pytest.approx(-0.334, abs=1e-3) and test.ci_high == pytest.approx(0.044, abs=1e-3)
    assert test.p_value > 0.05 and not test.excludes_zero()


def test_no_discordant_pair_is_not_a_zero_width_interval():
    a = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    test = st.mcnemar_test(a, a.copy())
    assert test.p_value == 1.0 and test.diff == 0.0
    upper = 1 - 0.025 ** (1 / 5)  # Clopper-Pearson upper bound of 0 discordant in 5
    assert (test.ci_low, test.ci_high) == (pytest.approx(-upper), pytest.approx(upper))


def test_mcnemar_interval_is_the_inverted_binomial_test():
    a = np.array([1] * 8 + [0] * 1 + [1] * 5 + [0] * 6, dtype=float)
    b = np.array([0] * 8 + [1] * 1 + [1] * 5 + [0] * 6, dtype=float)
    test = st.mcnemar_test(a, b)
    # 8 wins, 1 loss in 20 pairs: diff 7/20; the share 8/9 has Clopper-Pearson [0.5175, 0.9972]
    assert test.diff == pytest.approx(7 / 20)
    assert test.ci_low == pytest.approx(9 * (2 * 0.5175 - 1) / 20, abs=1e-3)
    assert test.p_value == pytest.approx(20 / 512)


def test_holm_corrects_and_keeps_missing_tests_out():
    corrected = st.holm([0.01, 0.04, math.nan, 0.03])
    assert corrected[0] == pytest.approx(0.03) and corrected[3] == pytest.approx(0.06)
    assert corrected[1] == pytest.approx(0.06) and math.isnan(corrected[2])


def test_power_gives_a_detectable_effect_and_the_samples_a_stated_effect_needs():
    diffs = np.array([0.1, -0.2, 0.05, 0.15, -0.05, 0.0, 0.12, -0.1])
    mde = st.minimum_detectable_effect(diffs)
    sd = diffs.std(ddof=1)
    assert 0.9 * sd < mde < 1.6 * sd  # n = 8: a standardised effect of about 1.1 is detectable
    needed = st.samples_needed(diffs, effect=mde)
    assert needed in (8, 9)  # the effect this n detects needs this n
    assert st.samples_needed(diffs, effect=mde / 2) > 25
    assert st.minimum_detectable_effect(np.zeros(5)) is None


def test_verdicts_follow_direction_and_corrected_p():
    assert st.verdict(-0.1, 0.01, lower_is_better=True) == "better"
    assert st.verdict(-0.1, 0.01, lower_is_better=False) == "worse"
    assert st.verdict(0.3, 0.2, lower_is_better=False) == "no detectable difference"
    assert st.verdict(0.3, math.nan, lower_is_better=False) == "too few pairs"


def test_compare_gives_verdicts_against_the_best_single_and_summary_entries_for_trackers():
    rng = np.random.default_rng(0)
    records = []
    for i in range(30):
        base = rng.uniform(0.8, 1.2)
        records += [rec("a", f"s{i}", base + 0.05), rec("b", f"s{i}", base + 0.2 + rng.normal(0, 0.02)),
                    rec("ens", f"s{i}", base - 0.1 + rng.normal(0, 0.02), latency_s=2.0, batch_size=4)]
    ab = compare(records, VARIANTS).to_dict()
    vs = {(c["single"], c["metric"]): c for c in ab["comparisons"]}
    best = vs[("a", "bits_per_char")]
    assert best["vs_best_single"] and not vs[("b", "bits_per_char")]["vs_best_single"]
    assert best["verdict"] == "better" and best["diff"] < 0 and best["p_holm"] < 0.05
    assert ab["batch_sizes"] == {"ens": [4]} and ab["families"]["quality"] == ["bits_per_char"]
    entries = summary_entries(ab)
    assert entries["ens"]["verdict.vs.a.bits_per_char"] == "better"
    assert entries["ens"]["vs.a.bits_per_char.p_holm"] == best["p_holm"]
    assert "bits_per_char.ci_low" in entries["a"]


def test_no_difference_gives_the_detectable_effect_and_the_needed_n():
    rng = np.random.default_rng(1)
    records = []
    for i in range(10):
        base = rng.uniform(0.8, 1.2)
        records += [rec("a", f"s{i}", base), rec("ens", f"s{i}", base + rng.normal(0, 0.05))]
    [c] = compare(records, [VARIANTS[0], VARIANTS[2]]).to_dict()["comparisons"]
    assert c["verdict"] == "no detectable difference"
    assert c["mde"] > 0 and c["effect"] == pytest.approx(0.05 * np.mean([r.scores["bits_per_char"]
                                                                          for r in records if r.variant == "a"]))
    diffs = np.array([e.scores["bits_per_char"] - a.scores["bits_per_char"]
                      for a, e in zip(records[::2], records[1::2])])
    normal = ((1.95996 + 0.84162) * diffs.std(ddof=1) / c["effect"]) ** 2  # the z approximation of paired t
    assert normal <= c["n_needed"] <= normal + 3
