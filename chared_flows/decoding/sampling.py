"""Choosing one option from a next-character distribution: greedy or sampled with top-p."""

from __future__ import annotations

import math

import numpy as np

from chared_flows.errors import ConfigError


def validate_decoding(max_new_chars: int, temperature: float, top_p: float) -> None:
    if not isinstance(max_new_chars, int) or isinstance(max_new_chars, bool) or max_new_chars <= 0:
        raise ConfigError(f"max_new_chars is {max_new_chars!r}; it must be a positive integer")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"temperature is {temperature!r}; use 0 for greedy or a positive number")
    if not isinstance(top_p, (int, float)) or not (0 < top_p <= 1):
        raise ConfigError(f"top_p is {top_p!r}; it must lie in (0, 1]")


def choose(dist: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy (temperature 0: the largest marginal, first on ties) or a sample.

    Temperature itself is applied to each member's token logits (so one member
    at weight 1 samples exactly as the model would); top-p acts here, on the
    combined character distribution.
    """
    if temperature == 0:
        return int(np.argmax(dist))
    probs = dist / dist.sum()
    if top_p < 1.0:
        probs = _top_p(probs, top_p)
    # searchsorted on the cumulative sum: microseconds, unlike torch.multinomial.
    cdf = np.cumsum(probs)
    pick = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(pick, len(probs) - 1)


def _top_p(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the most likely options whose mass first reaches top_p; renormalise."""
    order = np.argsort(-probs, kind="stable")
    cum = np.cumsum(probs[order])
    keep = order[: int(np.searchsorted(cum, top_p, side="left")) + 1]
    out = np.zeros_like(probs)
    out[keep] = probs[keep]
    return out / out.sum()
