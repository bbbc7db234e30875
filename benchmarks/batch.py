"""Batched decoding across prompts: total characters/s at batch 8 against one prompt at a time.

    python benchmarks/batch.py [--threads 1] [--chars 60] [--batch 8] [--modes chared,exact]

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
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chared_flows.decoding import Ensemble, Member  # noqa: E402
from chared_flows.decoding.backends.scheduler import scheduler_for  # noqa: E402
from benchmarks.questions import QUESTIONS  # noqa: E402


def run(ens: Ensemble, prompts: list[str], chars: int, batch: int) -> dict:
    schedulers = [scheduler_for(m.assets.backend) for m in ens.members]
    before = [(s.batches, s.passes) for s in schedulers]
    start = time.perf_counter()
    one = [ens.generate(p, max_new_chars=chars) for p in prompts]
    t_one = time.perf_counter() - start
    middle = [(s.batches, s.passes) for s in schedulers]
    start = time.perf_counter()
    many = ens.generate_batch(prompts, max_new_chars=chars, batch_size=batch)
    t_many = time.perf_counter() - start
    after = [(s.batches, s.passes) for s in schedulers]
    per_call = [(a[1] - m[1]) / max(a[0] - m[0], 1) for a, m in zip(after, middle)]
    per_call_one = [(m[1] - b[1]) / max(m[0] - b[0], 1) for m, b in zip(middle, before)]
    chars_one, chars_many = sum(r.stats.chars for r in one), sum(r.stats.chars for r in many)
    return {
        "cps_one": chars_one / t_one, "cps_many": chars_many / t_many, "t_one": t_one, "t_many": t_many,
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    members = [Member.load("smollm2", backend="transformers"), Member.load("gemma3-270m", backend="transformers")]
    prompts = [f"Question: {q}\nAnswer:" for q in QUESTIONS]
    print(f"# batch benchmark: {len(prompts)} prompts x {args.chars} chars, batch {args.batch}, torch "
          f"{torch.__version__}, threads={torch.get_num_threads()}, cores={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print("\n| mode | one at a time chars/s | batch chars/s | ratio | passes per batched call | identical texts |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in args.modes.split(","):
        ens = Ensemble(members, weights=[0.5, 0.5], mode=mode)
        ens.generate(prompts[0], max_new_chars=5)  # warm-up
        r = run(ens, prompts, args.chars, args.batch)
        per_call = " / ".join(f"{x:.1f}" for x in r["per_call"])
        print(f"| {mode} | {r['cps_one']:.1f} | {r['cps_many']:.1f} | {r['cps_many'] / r['cps_one']:.2f}x | "
              f"{per_call} | {len(prompts) - len(r['differ'])}/{len(prompts)} |", flush=True)
        for i in r["differ"]:
            print(f"  differs, prompt {i}: {r['texts'][i][0]!r} vs {r['texts'][i][1]!r}")
    print(f"\nthreads={torch.get_num_threads()}   load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
