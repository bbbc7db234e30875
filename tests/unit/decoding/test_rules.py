"""Combination rules: weight 1 reproduces a member, zeros, abstention, adaptive moves weight."""

import numpy as np
import pytest

from chared_flows.decoding import Ensemble
from chared_flows.decoding.combine import RULE_FUNCTIONS, adaptive, entropy, mixture, product
from chared_flows.errors import ConfigError
from tests.fixtures.tiny import tiny_member

RULES = sorted(RULE_FUNCTIONS)


def dists(seed=0, n=3, size=258):
    rng = np.random.default_rng(seed)
    out = [rng.dirichlet(np.full(size, 0.3)) for _ in range(n)]
    out[0][5] = 0.0  # a zero the product must respect
    return [d / d.sum() for d in out]


@pytest.mark.parametrize("rule", RULES)
def test_weight_one_reproduces_that_member_exactly(rule):
    ps = dists()
    for k in range(3):
        w = np.zeros(3)
        w[k] = 1.0
        np.testing.assert_array_equal(RULE_FUNCTIONS[rule](ps, w), ps[k])


@pytest.mark.parametrize("rule", RULES)
def test_abstaining_member_is_left_out(rule):
    ps = dists()
    w = np.array([0.5, 0.5, 0.0])
    got = RULE_FUNCTIONS[rule]([ps[0], None, ps[2]], w)
    np.testing.assert_allclose(got, ps[0])
    assert RULE_FUNCTIONS[rule]([None, None, None], w).size == 0


def test_product_is_the_renormalised_weighted_geometric_mean():
    ps, w = dists(), np.array([0.2, 0.3, 0.5])
    want = ps[0] ** 0.2 * ps[1] ** 0.3 * ps[2] ** 0.5
    np.testing.assert_allclose(product(ps, w), want / want.sum(), rtol=1e-12)
    assert product(ps, w)[5] == 0.0  # member 0 vetoes option 5


def test_product_falls_back_to_mixture_on_disjoint_support():
    a, b = np.zeros(258), np.zeros(258)
    a[1], b[2] = 1.0, 1.0
    w = np.array([0.5, 0.5])
    np.testing.assert_allclose(product([a, b], w), mixture([a, b], w))


def test_adaptive_moves_weight_to_the_more_confident_member():
    sure, unsure = np.zeros(258), np.full(258, 1 / 258)
    sure[7] = 1.0
    w = np.array([0.5, 0.5])
    got = adaptive([sure, unsure], w)
    assert got[7] > mixture([sure, unsure], w)[7]
    # Weight ∝ w_k / perplexity_k: sure has perplexity 1, uniform has 258.
    k = 1 / (1 + 1 / 258)
    np.testing.assert_allclose(got, k * sure + (1 - k) * unsure, rtol=1e-12)
    assert entropy(unsure) == pytest.approx(np.log(258))


@pytest.mark.parametrize("mode", ["chared", "exact"])
def test_weight_one_ensemble_scores_like_the_member_alone(mode):
    a, b = tiny_member("byte_level", 0), tiny_member("byte_fallback", 1)
    alone = Ensemble([a], mode=mode).score("Tom has", " 3 a")
    for rule in RULES:
        paired = Ensemble([a, b], weights=[1.0, 0.0], mode=mode, rule=rule).score("Tom has", " 3 a")
        np.testing.assert_allclose(paired.byte_logprobs, alone.byte_logprobs, rtol=1e-12, err_msg=rule)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="beam"), "mode is 'beam': Input should be 'chared' or 'exact'"),
        (dict(rule="max"), "rule is 'max': Input should be 'mixture', 'product' or 'adaptive'"),
        (dict(beam_width=0), "beam_width is 0: Input should be greater than or equal to 1"),
        (dict(beam_width=2.5), "beam_width is 2.5: Input should be a valid integer"),
        (dict(beam_width=True), "beam_width is True: Input should be a valid integer"),
        (dict(prune_threshold=-0.1), "prune_threshold is -0.1: Input should be greater than or equal to 0"),
        (dict(prune_threshold=float("nan")), "prune_threshold must be finite, not nan"),
        (dict(token_healing="yes"), "token_healing is 'yes': Input should be a valid boolean"),
        (dict(max_new_chars=10**6), "max_new_chars is 1000000: Input should be less than or equal to 32768"),
        (dict(wieghts=[1.0]), "unknown decoding parameter 'wieghts'"),
    ],
)
def test_bad_mode_rule_and_beam_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Ensemble([tiny_member("byte_level", 0)], **kwargs)
