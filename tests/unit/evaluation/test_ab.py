from __future__ import annotations

import numpy as np
import pytest

from chared_flows.evaluation.ab import bootstrap_mean_ci, compare, mcnemar_exact_p, sign_flip_p
from chared_flows.records import SampleRecord, VariantSpec

VARIANTS = [
    VariantSpec("a", ("a",)),
    VariantSpec("b", ("b",)),
    VariantSpec("ens", ("a", "b"), (0.5, 0.5)),
]


def rec(variant, sample, score, **kw):
    return SampleRecord("r", "w", 1, "t", 1, "h", variant, sample, {}, "", scores={"exact_match": score}, **kw)


def test_sign_flip_exact_small_n():
    # 4 positive diffs: only all-plus and all-minus reach |mean| -> p = 2/16
    assert sign_flip_p(np.array([1.0, 1.0, 1.0, 1.0])) == pytest.approx(2 / 16)
    assert sign_flip_p(np.zeros(5)) == 1.0


def test_sign_flip_monte_carlo_detects_a_clear_shift():
    diffs = np.full(40, 0.5) + np.random.default_rng(1).normal(0, 0.1, 40)
    assert sign_flip_p(diffs, resamples=2000, seed=0) < 0.01


def test_mcnemar_exact():
    a = np.array([1] * 10 + [0] * 10)
    b = np.array([0] * 10 + [0] * 10)
    assert mcnemar_exact_p(a, b) == pytest.approx(2 / 2**10)
    assert mcnemar_exact_p(a, a) == 1.0


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    values = np.arange(20, dtype=float)
    assert bootstrap_mean_ci(values, seed=3) == bootstrap_mean_ci(values, seed=3)
    low, high = bootstrap_mean_ci(values)
    assert low < values.mean() < high


def test_compare_pairs_by_sample_and_tests_ensembles_against_singles():
    records = []
    for i in range(30):
        records += [rec("a", f"s{i}", 1.0 if i < 10 else 0.0), rec("b", f"s{i}", 1.0 if i < 12 else 0.0),
                    rec("ens", f"s{i}", 1.0 if i < 25 else 0.0, latency_s=2.0)]
    records.append(rec("ens", "extra", 1.0))  # no partner: not in paired comparisons
    records.append(rec("a", "broken", 1.0, error="crash"))  # errors are left out
    result = compare(records, VARIANTS, resamples=500).to_dict()
    means = {(s["variant"], s["metric"]): s for s in result["variants"]}
    assert means[("a", "exact_match")]["mean"] == pytest.approx(10 / 30)
    assert means[("ens", "exact_match")]["n"] == 31
    pairs = {(c["ensemble"], c["single"], c["metric"]): c for c in result["comparisons"]}
    assert set(k[:2] for k in pairs) == {("ens", "a"), ("ens", "b")}
    vs_a = pairs[("ens", "a", "exact_match")]
    assert vs_a["n"] == 30 and vs_a["diff"] == pytest.approx(15 / 30)
    assert vs_a["ci_low"] > 0 and vs_a["p_permutation"] < 0.01 and vs_a["p_mcnemar"] < 0.001
    assert pairs[("ens", "a", "latency_s")]["p_mcnemar"] is None
