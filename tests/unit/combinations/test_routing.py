"""Sticky traffic splits, the live router, feedback into a live report, and the guarded rollout."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from chared_flows.combinations.guard import Guard, false_alarm_rate, simulate
from chared_flows.combinations.live_stats import Observation, live_report
from chared_flows.combinations.routing import Split
from chared_flows.errors import ConfigError

SHARES = {"champion": 0.7, "challenger": 0.2, "canary": 0.1}
KEYS = [f"user-{i}" for i in range(20_000)]


def test_20000_keys_split_within_a_999_binomial_interval_sticky_and_reshuffled_by_salt():
    split = Split("exp-1", SHARES)
    arms = [split.arm_of(k) for k in KEYS]
    for arm, share in SHARES.items():
        low, high = binom.interval(0.999, len(KEYS), share)
        assert low <= arms.count(arm) <= high, (arm, arms.count(arm))
    assert [Split("exp-1", SHARES).arm_of(k) for k in KEYS] == arms  # 100% sticky, in a new object too
    other = [Split("exp-2", SHARES).arm_of(k) for k in KEYS]
    moved = sum(a != b for a, b in zip(arms, other))
    # independent assignments differ with probability 1 - sum(share^2) = 0.46
    expected = 1 - sum(s * s for s in SHARES.values())
    assert binom.interval(0.999, len(KEYS), expected)[0] <= moved <= binom.interval(0.999, len(KEYS), expected)[1]


@pytest.mark.parametrize("shares, message", [
    ({"a": 0.5, "b": 0.6}, "sum to 1.1, not 1"),
    ({"a": -0.5, "b": 1.5}, "share of arm 'a' is -0.5"),
    ({"a": float("nan"), "b": 1.0}, "share of arm 'a' is nan"),
    ({}, "no arms"),
])
def test_bad_shares_are_one_line(shares, message):
    with pytest.raises(ConfigError, match=message):
        Split("exp", shares)


def test_empty_keys_and_salts_are_refused():
    with pytest.raises(ConfigError, match="routing key '' is empty"):
        Split("exp", {"a": 1.0}).arm_of("")
    with pytest.raises(ConfigError, match="salt '' must be"):
        Split("", {"a": 1.0})


def test_live_report_numbers_equal_a_hand_computation():
    control = [3.0, 4.0, 5.0, 4.0]
    challenger = [5.0, 6.0, 4.0, 7.0, 6.0]
    clicks_a, clicks_b = [1, 0, 0, 1, 0, 0, 1, 0], [1, 1, 0, 1, 1, 1, 0, 1]
    obs = [Observation("champion", "stars", v) for v in control] + [Observation("challenger", "stars", v) for v in challenger]
    obs += [Observation("champion", "click", v) for v in clicks_a] + [Observation("challenger", "click", v) for v in clicks_b]
    report = live_report("exp", obs, control="champion")
    stars = next(c for c in report.comparisons if c.metric == "stars")
    # Welch by hand
    m1, m0 = np.mean(challenger), np.mean(control)
    v1, v0 = np.var(challenger, ddof=1) / 5, np.var(control, ddof=1) / 4
    t = (m1 - m0) / math.sqrt(v1 + v0)
    df = (v1 + v0) ** 2 / (v1**2 / 4 + v0**2 / 3)
    from scipy.stats import t as t_dist

    assert stars.method == "Welch t" and stars.diff == pytest.approx(m1 - m0)
    assert stars.p == pytest.approx(2 * t_dist.sf(abs(t), df))
    half = t_dist.ppf(0.975, df) * math.sqrt(v1 + v0)
    assert (stars.ci_low, stars.ci_high) == pytest.approx((m1 - m0 - half, m1 - m0 + half))
    click = next(c for c in report.comparisons if c.metric == "click")
    assert click.diff == pytest.approx(6 / 8 - 3 / 8) and click.n_control == 8 and click.p_fisher is not None
    assert click.ci_low < click.diff < click.ci_high
    # Holm over the two comparisons: the smaller p doubled, the larger max(itself, that)
    ps = sorted([stars.p, click.p])
    holm = [min(2 * ps[0], 1), min(max(2 * ps[0], ps[1]), 1)]
    assert sorted([stars.p_holm, click.p_holm]) == pytest.approx(holm)
    assert {a.arm: a.n for a in report.arms if a.metric == "stars"} == {"champion": 4, "challenger": 5}


def test_guard_stops_a_worse_challenger_and_rarely_a_same_one():
    assert simulate(0.0, -0.5, 1.0, 400, 20, tau=0.3) == 1.0  # challenger half a s.d. worse: always stopped
    assert simulate(0.0, 0.5, 1.0, 400, 20, tau=0.3) == 0.0  # better: never
    rate = false_alarm_rate(n_per_arm=300, runs=100, tau=0.3, seed=1)
    assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 100)  # alpha plus Monte-Carlo error


def test_guard_stops_when_both_arms_are_constant_and_the_challenger_lower():
    guard = Guard("a", "b", min_samples=3)
    for _ in range(3):
        guard.observe("a", 1.0)
        guard.observe("b", 1.0)
    assert not guard.stopped  # equal constants: no evidence either way
    other = Guard("a", "b", min_samples=3)
    stops = [other.observe("a", 1.0) or other.observe("b", 0.0) for _ in range(3)]
    assert stops == [False, False, True] and other.stopped_at["difference"] == -1.0


def test_guard_checks_its_settings():
    with pytest.raises(ConfigError, match="alpha 1.5"):
        Guard("a", "b", alpha=1.5)
