"""Weights and combination rules: how members' next-character distributions become one.

Every rule takes the members' conditional distributions over the same options
(None = the member abstains at this step) and the normalised weights, and
returns one distribution (not necessarily normalised; the sampler normalises)
or an empty array when no member has an opinion.

Shared conventions, so that weight 1 on one member reproduces it exactly:
- a member with weight 0 or an abstaining member (None) is left out and the
  others' weights are renormalised;
- with a single active member every rule returns that member's distribution.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from chared_flows.errors import ConfigError

Conditionals = Sequence["np.ndarray | None"]


def normalise_weights(weights: Sequence[float] | None, n_members: int) -> np.ndarray:
    """One weight per member, scaled to sum 1 (None: uniform).

    The values were checked once, by DecodeConfig (config.py: finite, >= 0, not all zero);
    only the count needs the members, so it is checked here.
    """
    if n_members < 1:
        raise ConfigError("an ensemble needs at least one member; pass e.g. [Member.load('smollm2')]")
    if weights is None:
        return np.full(n_members, 1.0 / n_members)
    values = np.asarray(weights, dtype=np.float64)
    if len(values) != n_members:
        raise ConfigError(
            f"got {len(values)} weights {list(weights)} for {n_members} members; give exactly one weight per member"
        )
    return values / values.sum()


def _active(conditionals: Conditionals, weights: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Members with an opinion and a positive weight, and their renormalised weights."""
    active = [i for i, p in enumerate(conditionals) if p is not None and weights[i] > 0]
    w = np.asarray([weights[i] for i in active], dtype=np.float64)
    return active, (w / w.sum() if len(active) else w)


def mixture(conditionals: Conditionals, weights: np.ndarray) -> np.ndarray:
    """Weighted average of the members' conditional distributions (the paper's rule).

    A member with no mass left on the in-round prefix (None) abstains: the
    weights of the others are renormalised. Deciding this is ours (the paper
    leaves it open): such a member has no token that continues the text this
    round, so it has no opinion on the next character until the next round.
    """
    active, w = _active(conditionals, weights)
    if not active:
        return np.zeros(0)
    out = np.zeros_like(conditionals[active[0]], dtype=np.float64)
    for i, wi in zip(active, w):
        out += wi * conditionals[i]
    return out


def product(conditionals: Conditionals, weights: np.ndarray) -> np.ndarray:
    """Weighted geometric mean, renormalised: p(o) ∝ prod_k p_k(o)^w_k (product of experts).

    Zeros veto: an option one active member gives probability 0 gets 0. If the
    vetoes leave nothing (the members' supports are disjoint), we fall back to
    the mixture rather than stop the text. Abstaining / zero-weight members are
    left out *before* the logs (subtle: 0 * log 0 would be nan, not "no vote").
    """
    active, w = _active(conditionals, weights)
    if not active:
        return np.zeros(0)
    if len(active) == 1:
        return np.asarray(conditionals[active[0]], dtype=np.float64)
    support = np.ones_like(conditionals[active[0]], dtype=bool)
    for i in active:
        support &= conditionals[i] > 0
    if not support.any():
        return mixture(conditionals, weights)
    logp = np.zeros(int(support.sum()))
    for i, wi in zip(active, w):
        logp += wi * np.log(conditionals[i][support])
    out = np.zeros_like(conditionals[active[0]], dtype=np.float64)
    out[support] = np.exp(logp - logp.max())
    return out / out.sum()


def entropy(p: np.ndarray) -> float:
    """Shannon entropy in nats of a (renormalised) distribution."""
    q = p[p > 0] / p.sum()
    return float(-(q * np.log(q)).sum())


def adaptive(conditionals: Conditionals, weights: np.ndarray) -> np.ndarray:
    """Mixture whose weights move, at every step, towards the more confident member.

    w'_k ∝ w_k * exp(-H(p_k)) = w_k / perplexity_k. Confidence = negative
    entropy: exp(H) is the member's effective number of options at this step,
    so each member's say is divided by how many options it hesitates between.
    Entropy (not just the top probability) rewards a member that is sure of a
    few options, and it needs no tuning knob. The reweighting uses only this
    step's distributions (no hidden state), so it is identical in generation
    and in scoring, and the same in both modes. Weight 1 on a member stays 1.
    """
    active, w = _active(conditionals, weights)
    if not active:
        return np.zeros(0)
    confidence = np.asarray([-entropy(conditionals[i]) for i in active])
    moved = w * np.exp(confidence - confidence.max())
    moved_full = np.zeros(len(conditionals))
    moved_full[active] = moved / moved.sum()
    return mixture(conditionals, moved_full)


RULE_FUNCTIONS: dict[str, Callable[[Conditionals, np.ndarray], np.ndarray]] = {
    "mixture": mixture,
    "product": product,
    "adaptive": adaptive,
}
