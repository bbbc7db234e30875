"""A guarded rollout: an always-valid sequential test that the challenger is worse (mSPRT).

The mixture sequential probability ratio test (Johari, Pekelis, Walsh, "Always valid
inference", 2017) with a normal mixture N(theta0, tau^2) over the difference of means.
With d = mean(challenger) - mean(control) and V = s_c^2/n_c + s_t^2/n_t,

    Lambda_n = sqrt(V / (V + tau^2)) * exp(tau^2 (d - theta0)^2 / (2 V (V + tau^2)))

and rejecting when Lambda_n >= 1/alpha keeps the chance of *ever* rejecting a true null
below alpha however often one looks. Here theta0 = -margin and the guard stops only when
d < theta0 (the challenger is worse than the margin allows); the plug-in variances make the
bound approximate, so `false_alarm_rate` measures it by simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from chared_flows.errors import ConfigError


def msprt_lambda(d: float, v: float, tau: float, theta0: float) -> float:
    if v <= 0:  # both arms constant so far: the difference is known exactly
        return math.inf if d != theta0 else 0.0
    t2 = tau * tau
    return math.sqrt(v / (v + t2)) * math.exp(min(700.0, t2 * (d - theta0) ** 2 / (2 * v * (v + t2))))


@dataclass
class _Moments:
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0  # Welford's running sum of squared deviations

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    @property
    def var(self) -> float:
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0


@dataclass
class Guard:
    """Watches one feedback metric of control and challenger; `stopped` once the challenger is worse."""

    control: str
    challenger: str
    margin: float = 0.0
    alpha: float = 0.05
    tau: float = 0.1
    min_samples: int = 20  # per arm, before the variances are trusted
    higher_is_better: bool = True
    stats: dict[str, _Moments] = field(default_factory=dict)
    stopped: bool = False
    stopped_at: dict | None = None

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ConfigError(f"guard alpha {self.alpha} must lie in (0, 1), e.g. 0.05")
        if self.margin < 0 or self.tau <= 0:
            raise ConfigError(f"guard margin {self.margin} must be >= 0 and tau {self.tau} > 0")
        self.stats = {self.control: _Moments(), self.challenger: _Moments()}

    def observe(self, arm: str, value: float) -> bool:
        """Add one feedback value; True when this observation stops the rollout."""
        if self.stopped or arm not in self.stats:
            return False
        self.stats[arm].add(float(value) if self.higher_is_better else -float(value))
        c, t = self.stats[self.control], self.stats[self.challenger]
        if min(c.n, t.n) < self.min_samples:
            return False
        d = t.mean - c.mean
        lam = msprt_lambda(d, c.var / c.n + t.var / t.n, self.tau, -self.margin)
        if d < -self.margin and lam >= 1 / self.alpha:
            self.stopped = True
            self.stopped_at = {"n_control": c.n, "n_challenger": t.n, "difference": d if self.higher_is_better else -d,
                               "lambda": lam, "threshold": 1 / self.alpha}
            return True
        return False


def simulate(mean_control: float, mean_challenger: float, sd: float, n_per_arm: int, runs: int, *,
             margin: float = 0.0, alpha: float = 0.05, tau: float = 0.1, binary: bool = False,
             seed: int = 0) -> float:
    """Share of simulated rollouts the guard stops (looking after every pair of observations)."""
    rng = np.random.default_rng(seed)
    stops = 0
    for _ in range(runs):
        guard = Guard("control", "challenger", margin=margin, alpha=alpha, tau=tau)
        if binary:
            a = (rng.random(n_per_arm) < mean_control).astype(float)
            b = (rng.random(n_per_arm) < mean_challenger).astype(float)
        else:
            a = rng.normal(mean_control, sd, n_per_arm)
            b = rng.normal(mean_challenger, sd, n_per_arm)
        for x, y in zip(a, b):
            guard.observe("control", x)
            guard.observe("challenger", y)
            if guard.stopped:  # subtle: either arm's observation may be the one that stops it
                stops += 1
                break
    return stops / runs


def false_alarm_rate(sd: float = 1.0, n_per_arm: int = 500, runs: int = 200, **options) -> float:
    """The guard's stop rate when both arms are the same (a false alarm), by simulation."""
    return simulate(0.0, 0.0, sd, n_per_arm, runs, **options)
