"""Sticky traffic splits: which arm serves a key (a user or session id), stdlib only.

A key's position is u = the first 8 bytes of sha256(salt, NUL, key) as a fraction of 2**64,
uniform on [0, 1); arm i serves u in [c_{i-1}, c_i) where c are the cumulative shares. The
same (salt, key) always lands on the same arm; a new salt reshuffles every key.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Mapping

from chared_flows.errors import ConfigError

SHARE_TOLERANCE = 1e-9


def position(salt: str, key: str) -> float:
    """The key's place on [0, 1) under this salt."""
    digest = hashlib.sha256(salt.encode("utf-8") + b"\0" + key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def check_shares(shares: Mapping[str, float]) -> dict[str, float]:
    """Shares per arm: numbers >= 0 that sum to 1; anything else is one line naming it."""
    if not shares:
        raise ConfigError("no arms: give at least one arm with a traffic share, e.g. {'champion': 1.0}")
    out = {}
    for arm, share in shares.items():
        if not isinstance(arm, str) or not arm:
            raise ConfigError(f"arm name {arm!r} must be a non-empty string")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share) or share < 0:
            raise ConfigError(f"traffic share of arm {arm!r} is {share!r}; shares must be numbers >= 0 summing to 1")
        out[arm] = float(share)
    total = sum(out.values())
    if abs(total - 1.0) > SHARE_TOLERANCE:
        listed = ", ".join(f"{a}={s:g}" for a, s in out.items())
        raise ConfigError(f"traffic shares {listed} sum to {total:g}, not 1; scale them so they sum to 1")
    return out


def check_key(key: object) -> str:
    if not isinstance(key, str) or not key.strip():
        raise ConfigError(f"routing key {key!r} is empty; pass a user or session id in the call's config, e.g. "
                          "config={'configurable': {'user_id': 'u-42'}}")
    return key


@dataclass(frozen=True)
class Split:
    """Arms with their traffic shares under one salt."""

    salt: str
    shares: dict[str, float]

    def __post_init__(self) -> None:
        if not isinstance(self.salt, str) or not self.salt:
            raise ConfigError(f"salt {self.salt!r} must be a non-empty string (e.g. the experiment's name)")
        object.__setattr__(self, "shares", check_shares(self.shares))
        bounds, total = [], 0.0
        for arm, share in self.shares.items():
            total += share
            bounds.append((total, arm))
        object.__setattr__(self, "_bounds", bounds)

    def arm_of(self, key: str) -> str:
        u = position(self.salt, check_key(key))
        for bound, arm in self._bounds:
            if u < bound:
                return arm
        # subtle: shares summing to 1 - 1e-12 leave a sliver below 1; it belongs to the last arm with a share
        return next(arm for arm, share in reversed(list(self.shares.items())) if share > 0)
