"""Batched decoding across prompts: total characters/s at batch 8 against one prompt at a time.

    python benchmarks/batch.py [--threads 1] [--chars 60] [--batch 8] [--modes chared,exact] [--batch-only]

--batch-only runs generate_batch alone (for a profile: benchmarks/profile_stacks.py). Also
printed: how many decodings' passes each batched call held (all 8 in step would be 8).

The same 8 GSM-style prompts, CharED(SmolLM2, Gemma-3) 0.5/0.5, greedy, --chars characters
each, decoded (1) one after the other with `generate` and (2) all at once with
`generate_batch(batch_size=--batch)`, in one run, side by side. Prints total characters/s
of both, their ratio, the forward passes per batched call the schedulers achieved, and
whether every batched text equals its one-at-a-time text (it must, up to float rounding
of a batched matrix product: a differing text is reported, not hidden). Thread count and
load average are printed with every figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chared_flows.decoding import Ensemble, Member  # noqa: E402
from chared_flows.decoding.backends.scheduler import PassScheduler, scheduler_for  # noqa: E402
from benchmarks.questions import QUESTIONS  # noqa: E402


class OwnersPerCall:
    """Counts, per batched call, how many decodings' passes it held (wraps PassScheduler._run)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self._run = PassScheduler._run

    def __enter__(self) -> "OwnersPerCall":
        counts, run = self.counts, self._run

        def counted(scheduler, batch):
            counts[len({id(r.owner) for r in batch})] += 1
            return run(scheduler, batch)

        PassScheduler._run = counted
        return self

    def __exit__(self, *exc) -> None:
        PassScheduler._run = self._run

    def mean(self) -> float:
        calls = sum(self.counts.values())
        return sum(k * n for k, n in self.counts.items()) / calls if calls else 0.0


def run(ens: Ensemble, prompts: list[str], chars: int, batch: int, batch_only: bool = False) -> dict:
    schedulers = [scheduler_for(m.assets.backend) for m in ens.members]
    before = [(s.batches, s.passes) for s in schedulers]
    start = time.perf_counter()
    one = [] if batch_only else [ens.generate(p, max_new_chars=chars) for p in prompts]
    t_one = time.perf_counter() - start
    middle = [(s.batches, s.passes) for s in schedulers]
    start = time.perf_counter()
    with OwnersPerCall() as owners:
        many = ens.generate_batch(prompts, max_new_chars=chars, batch_size=batch)
    t_many = time.perf_counter() - start
    after = [(s.batches, s.passes) for s in schedulers]
    per_call = [(a[1] - m[1]) / max(a[0] - m[0], 1) for a, m in zip(after, middle)]
    per_call_one = [(m[1] - b[1]) / max(m[0] - b[0], 1) for m, b in zip(middle, before)]
    chars_one, chars_many = sum(r.stats.chars for r in one), sum(r.stats.chars for r in many)
    return {
        "cps_one": chars_one / t_one if one else float("nan"), "cps_many": chars_many / t_many,
        "t_one": t_one, "t_many": t_many, "owners": owners,
        "per_call": per_call, "per_call_one": per_call_one,
        "differ": [i for i, (a, b) in enumerate(zip(one, many)) if a.text != b.text],
        "texts": [(a.text, b.text) for a, b in zip(one, many)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chars", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--modes", default="chared,exact")
    parser.add_argument("--batch-only", action="store_true", help="skip the one-at-a-time run (profiling)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    members = [Member.load("smollm2", backend="transformers"), Member.load("gemma3-270m", backend="transformers")]
    prompts = [f"Question: {q}\nAnswer:" for q in QUESTIONS]
    print(f"# batch benchmark: {len(prompts)} prompts x {args.chars} chars, batch {args.batch}, torch "
          f"{torch.__version__}, threads={torch.get_num_threads()}, cores={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print("\n| mode | one at a time chars/s | batch chars/s | ratio | passes per batched call "
          "| decodings per batched call (mean) | identical texts |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode in args.modes.split(","):
        ens = Ensemble(members, weights=[0.5, 0.5], mode=mode)
        ens.generate(prompts[0], max_new_chars=5)  # warm-up
        r = run(ens, prompts, args.chars, args.batch, args.batch_only)
        per_call = " / ".join(f"{x:.1f}" for x in r["per_call"])
        identical = "-" if args.batch_only else f"{len(prompts) - len(r['differ'])}/{len(prompts)}"
        one = "-" if args.batch_only else f"{r['cps_one']:.1f}"
        ratio = "-" if args.batch_only else f"{r['cps_many'] / r['cps_one']:.2f}x"
        print(f"| {mode} | {one} | {r['cps_many']:.1f} | {ratio} | "
              f"{per_call} | {r['owners'].mean():.1f} | {identical} |", flush=True)
        print(f"  decodings per batched call: {dict(sorted(r['owners'].counts.items()))}")
        for i in r["differ"]:
            print(f"  differs, prompt {i}: {r['texts'][i][0]!r} vs {r['texts'][i][1]!r}")
    print(f"\nthreads={torch.get_num_threads()}   load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
