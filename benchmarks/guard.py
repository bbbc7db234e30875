"""The guarded rollout's mSPRT: false-alarm rate with no difference, and how often it stops a worse challenger.

    python benchmarks/guard.py [--runs 400] [--n 1000] [--tau 0.3] [--alpha 0.05]

Each simulated rollout feeds control and challenger one feedback value each per step and the
guard looks after every value (as it does live); a rollout counts as stopped if the guard
ever fires within n values per arm. Continuous feedback is N(mean, 1); 0/1 feedback is
Bernoulli. The mSPRT bounds the false-alarm rate by alpha for known variances; the guard
plugs in sample variances, so the rate is measured here, not assumed.
"""

from __future__ import annotations

import argparse
import math
import time

from chared_flows.combinations.guard import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--n", type=int, default=1000, help="feedback values per arm per rollout")
    parser.add_argument("--tau", type=float, default=0.3)
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args()
    options = dict(tau=args.tau, alpha=args.alpha)
    rows = [
        ("continuous, no difference (false alarm)", dict(mean_control=0.0, mean_challenger=0.0, sd=1.0)),
        ("continuous, challenger -0.2 sd", dict(mean_control=0.0, mean_challenger=-0.2, sd=1.0)),
        ("0/1, no difference at p=0.5 (false alarm)", dict(mean_control=0.5, mean_challenger=0.5, sd=0.0, binary=True)),
        ("0/1, challenger 0.45 vs 0.55", dict(mean_control=0.55, mean_challenger=0.45, sd=0.0, binary=True)),
    ]
    print(f"mSPRT guard: alpha {args.alpha}, tau {args.tau}, {args.n} values per arm, {args.runs} rollouts each")
    for label, setting in rows:
        started = time.perf_counter()
        rate = simulate(n_per_arm=args.n, runs=args.runs, **setting, **options)
        half = 1.96 * math.sqrt(max(rate * (1 - rate), 1e-12) / args.runs)
        print(f"  {label:<44} stopped {rate:6.3f} (+-{half:.3f})  [{time.perf_counter() - started:.1f} s]")


if __name__ == "__main__":
    main()
