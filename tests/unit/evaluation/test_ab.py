from __future__ import annotations

import numpy as np
import pytest

from chared_flows.evaluation.ab import binomial_ci, compare
from chared_flows.evaluation.stats import mcnemar_test
from chared_flows.records import SampleRecord, VariantSpec

VARIANTS = [
    VariantSpec("a", ("a",)),
    VariantSpec("b", ("b",)),
    VariantSpec("ens", ("a", "b"), (0.5, 0.5)),
]


def rec(variant, sample, score, **kw):
    return SampleRecord("r", "w", 1, "t", 1, "h", variant, sample, {}, "", scores={"exact_match": score}, **kw)


def test_mcnemar_exact():
    a = np.array([1] * 10 + [0] * 10)
    b = np.array([0] * 10 + [0] * 10)
    assert mcnemar_test(a, b).p_value == pytest.approx(2 / 2**10)
    assert mcnemar_test(a, a).p_value == 1.0


def test_compare_pairs_by_sample_and_tests_ensembles_against_singles():
    records = []
    for i in range(30):
        records += [rec("a", f"s{i}", 1.0 if i < 10 else 0.0), rec("b", f"s{i}", 1.0 if i < 12 else 0.0),
                    rec("ens", f"s{i}", 1.0 if i < 25 else 0.0, latency_s=2.0)]
    records.append(rec("ens", "extra", 1.0))  # no partner: not in paired comparisons
    records.append(rec("a", "broken", 1.0, error="crash"))  # errors are left out
    result = compare(records, VARIANTS).to_dict()
    means = {(s["variant"], s["metric"]): s for s in result["variants"]}
    assert means[("a", "exact_match")]["mean"] == pytest.approx(10 / 30)
    assert means[("ens", "exact_match")]["n"] == 31
    pairs = {(c["ensemble"], c["single"], c["metric"]): c for c in result["comparisons"]}
    assert set(k[:2] for k in pairs) == {("ens", "a"), ("ens", "b")}
    vs_a = pairs[("ens", "a", "exact_match")]
    assert vs_a["n"] == 30 and vs_a["diff"] == pytest.approx(15 / 30)
    assert vs_a["ci_low"] > 0 and vs_a["method"] == "exact McNemar" and vs_a["p_value"] < 0.001
    assert vs_a["verdict"] == "better" and vs_a["p_holm"] >= vs_a["p_value"]
    assert pairs[("ens", "a", "latency_s")]["method"] == "paired t"  # a timing is never a proportion


def test_zero_of_fifty_gets_an_exact_interval_not_a_zero_width_one():
    records = [rec("a", f"s{i}", 0.0) for i in range(50)] + [rec("b", f"s{i}", float(i < 1)) for i in range(50)]
    stats = {s["variant"]: s for s in compare(records, VARIANTS[:2]).to_dict()["variants"]}
    assert stats["a"]["mean"] == 0.0 and stats["a"]["ci_method"] == "exact"
    assert (stats["a"]["ci_low"], round(stats["a"]["ci_high"], 4)) == (0.0, 0.0711)  # Clopper-Pearson
    assert round(stats["b"]["ci_low"], 5) == 0.00051 and round(stats["b"]["ci_high"], 4) == 0.1065
    assert binomial_ci(50, 50) == (pytest.approx(1 - 0.0711, abs=1e-4), 1.0)


def test_continuous_metrics_get_a_t_interval_and_one_value_gets_none():
    records = [rec("a", f"s{i}", v) for i, v in enumerate([0.4, 0.7, 1.1])] + [rec("b", "s0", 0.9)]
    stats = {s["variant"]: s for s in compare(records, VARIANTS[:2]).to_dict()["variants"]}
    # mean 0.7333, sd 0.3512, t(2, .975) = 4.3027 -> half width 0.8724
    assert stats["a"]["ci_method"] == "t"
    assert stats["a"]["ci_low"] == pytest.approx(0.7333 - 0.8724, abs=1e-3)
    assert stats["a"]["ci_high"] == pytest.approx(0.7333 + 0.8724, abs=1e-3)
    assert np.isnan(stats["b"]["ci_low"]) and stats["b"]["ci_method"] == ""
    counts = [rec("a", f"s{i}", 0.5, forward_passes=1) for i in range(3)]
    passes = next(s for s in compare(counts, VARIANTS[:1], metrics=["forward_passes"]).to_dict()["variants"])
    assert passes["ci_method"] == "t"  # a count that happens to be 1 everywhere is not a proportion


def test_a_t_interval_of_a_metric_that_cannot_be_negative_is_cut_at_zero():
    # char_compare's three texts: mean 1.0037, and a t interval reaching -0.0241 bits/char
    bits = [SampleRecord("r", "w", 1, "t", 1, "h", "a", f"s{i}", {}, "", scores={"bits_per_char": v})
            for i, v in enumerate([0.7029, 0.8327, 1.4756])]
    stats = compare(bits, VARIANTS[:1], metrics=["bits_per_char"]).to_dict()["variants"][0]
    assert (stats["ci_low"], stats["ci_method"]) == (0.0, "t, cut at 0")
    assert stats["ci_high"] == pytest.approx(2.0316, abs=1e-3)
    scores = [rec("a", f"s{i}", v) for i, v in enumerate([-0.5, 0.1, 0.2])]  # a score may be negative
    assert compare(scores, VARIANTS[:1]).to_dict()["variants"][0]["ci_low"] < -1


def test_mcnemar_agrees_with_the_binomial_distribution():
    # 9 wins, 1 loss: two-sided binomial p = 2 * (1 + 10) / 2**10
    a = np.array([1] * 9 + [0] + [1] * 3)
    b = np.array([0] * 9 + [1] + [1] * 3)
    assert mcnemar_test(a, b).p_value == pytest.approx(22 / 1024)


def test_comparisons_count_wins_and_report_means_per_domain():
    records = []
    for i in range(6):
        domain = "code" if i < 3 else "prose"
        records += [rec("a", f"s{i}", 1.0 + i, domain=domain), rec("b", f"s{i}", 2.0 + i, domain=domain),
                    rec("ens", f"s{i}", 0.5 + i, domain=domain)]
    result = compare(records, VARIANTS, metrics=["exact_match"]).to_dict()
    vs_a = next(c for c in result["comparisons"] if c["single"] == "a")
    assert (vs_a["wins"], vs_a["losses"]) == (0, 6) and vs_a["method"] == "paired t"
    code = {d["variant"]: d["mean"] for d in result["domains"] if d["domain"] == "code"}
    assert code == {"a": 2.0, "b": 3.0, "ens": 1.5}
    one_domain = compare([r for r in records if r.domain == "code"], VARIANTS).to_dict()
    assert one_domain["domains"] == []
