"""Greedy generation speed, chared mode vs exact mode, on both embedded models together.

    taskset -c 1 python benchmarks/modes.py [--threads 1] [--chars 80] [--weights 0.5,0.5]

Prompts: the first line or sentence of each text in benchmarks/texts/. For
each prompt the two modes run back to back (same ensemble, same weights,
temperature 0, --chars characters), so the ratio is measured side by side.
Each row carries the torch thread count and the 1-minute load average.
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

from benchmarks.exact_vs_genlm import split_text  # noqa: E402
from chared_flows.decoding import Ensemble, Member  # noqa: E402

MODES = ("chared", "exact")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chars", type=int, default=80)
    ap.add_argument("--weights", default="0.5,0.5")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    weights = [float(w) for w in args.weights.split(",")]
    start = time.perf_counter()
    members = [Member.load("smollm2", backend="transformers"), Member.load("gemma3-270m", backend="transformers")]
    print(f"# chared vs exact greedy: torch {torch.__version__}, threads={threads}, weights {weights}, "
          f"{args.chars} chars, models loaded in {time.perf_counter() - start:.1f} s")
    ensembles = {mode: Ensemble(members, weights=weights, mode=mode) for mode in MODES}
    for ens in ensembles.values():
        ens.generate("Warm-up:", max_new_chars=5)  # first-call costs (allocator, lazy imports)
    texts = {p.stem: p.read_text() for p in sorted((ROOT / "benchmarks" / "texts").glob("*.txt"))}
    print("\n| prompt | mode | chars | bytes | wall s | chars/s | forward passes (smollm2 + gemma) | pruned | threads | load |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|---:|")
    totals = {mode: [0, 0.0] for mode in MODES}
    for name, text in texts.items():
        prompt = split_text(text)[0]
        for mode, ens in ensembles.items():
            st = ens.generate(prompt, max_new_chars=args.chars, temperature=0).stats
            totals[mode][0] += st.chars
            totals[mode][1] += st.wall_time_s
            passes = " + ".join(str(st.forward_passes.get(n, 0)) for n in ens.names)
            pruned = f"{max(st.pruned_mass.values()):.1%}" if st.pruned_mass else "-"
            print(f"| {name} | {mode} | {st.chars} | {st.bytes} | {st.wall_time_s:.2f} | {st.chars_per_s:.2f} | "
                  f"{passes} | {pruned} | {threads} | {os.getloadavg()[0]:.2f} |", flush=True)
    rates = {mode: chars / secs for mode, (chars, secs) in totals.items()}
    print(f"\nall prompts: chared {rates['chared']:.2f} chars/s, exact {rates['exact']:.2f} chars/s, "
          f"exact / chared = {rates['exact'] / rates['chared']:.2f}  (threads={threads}, load {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
