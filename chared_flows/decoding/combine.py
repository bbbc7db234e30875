"""Weights and combination rules: how members' next-character distributions become one."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from chared_flows.errors import ConfigError

MODES = ("chared",)
RULES = ("mixture",)


def validate_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; use one of: {', '.join(MODES)}")
    return mode


def validate_rule(rule: str) -> str:
    if rule not in RULES:
        raise ConfigError(f"unknown combination rule {rule!r}; use one of: {', '.join(RULES)}")
    return rule


def normalise_weights(weights: Sequence[float] | None, n_members: int) -> np.ndarray:
    """Check one finite, non-negative weight per member, not all zero; scale them to sum 1."""
    if n_members < 1:
        raise ConfigError("an ensemble needs at least one member; pass e.g. [Member.load('smollm2')]")
    if weights is None:
        return np.full(n_members, 1.0 / n_members)
    values = list(weights)
    if len(values) != n_members:
        raise ConfigError(
            f"got {len(values)} weights {values} for {n_members} members; give exactly one weight per member"
        )
    for i, w in enumerate(values):
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
            raise ConfigError(f"weight {i} is {w!r}; weights must be finite numbers")
        if w < 0:
            raise ConfigError(f"weight {i} is {w}; weights must be >= 0")
    total = float(sum(values))
    if total <= 0:
        raise ConfigError(f"weights {values} are all zero; give at least one member a positive weight")
    return np.asarray(values, dtype=np.float64) / total


def mixture(conditionals: Sequence[np.ndarray | None], weights: np.ndarray) -> np.ndarray:
    """Weighted average of the members' conditional distributions (the paper's rule).

    A member with no mass left on the in-round prefix (None) abstains: the
    weights of the others are renormalised. Deciding this is ours (the paper
    leaves it open): such a member has no token that continues the text this
    round, so it has no opinion on the next character until the next round.
    """
    active = [i for i, p in enumerate(conditionals) if p is not None and weights[i] > 0]
    if not active:
        return np.zeros(0)
    total_w = sum(weights[i] for i in active)
    out = np.zeros_like(conditionals[active[0]])
    for i in active:
        out += (weights[i] / total_w) * conditionals[i]
    return out
