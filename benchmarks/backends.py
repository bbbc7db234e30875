"""CharED speed with llama.cpp members vs transformers members, side by side in one run.

    python benchmarks/backends.py [--threads 1] [--chars 150] [--repeats 3]

Both ensembles are SmolLM2-135M + Gemma-3-270M at weights 0.5/0.5, greedy,
from the same GGUF files: transformers runs their fp32 dequantisation,
llama.cpp runs the quantised files (Q4_1 / Q4_K_M). Runs alternate between
the two (A B A B ...) so that load on the machine hits both alike; we report
the best chars/s of each and their ratio, with the thread count (torch and
llama.cpp use the same number) and the load average before and after. Also:
whether the greedy texts are equal, and the per-member forward passes.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from chared_flows.decoding import Ensemble, Member

PROMPT = (
    "Question: A baker makes 24 muffins in the morning and 18 in the afternoon. "
    "He sells 30 of them. How many muffins are left?\nAnswer: Let's think step by step."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chars", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", default="chared", choices=["chared", "exact"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    ensembles = {}
    for kind, prefix in (("transformers", ""), ("llama.cpp", "llama_cpp:")):
        start = time.perf_counter()
        members = [Member.load(prefix + "smollm2"), Member.load(prefix + "gemma3-270m")]
        ensembles[kind] = Ensemble(members, weights=[0.5, 0.5], mode=args.mode)
        ensembles[kind].generate(PROMPT, max_new_chars=5)  # warm-up
        print(f"# {kind}: loaded in {time.perf_counter() - start:.1f} s")
    best: dict[str, float] = {}
    results = {}
    for _ in range(args.repeats):
        for kind, ens in ensembles.items():
            result = ens.generate(PROMPT, max_new_chars=args.chars)
            best[kind] = max(best.get(kind, 0.0), result.stats.chars_per_s)
            results[kind] = result
    load_after = os.getloadavg()
    print(f"# threads={args.threads} (torch and llama.cpp), mode={args.mode}, {args.chars} chars, "
          f"best of {args.repeats}, load average before {load_before[0]:.2f} after {load_after[0]:.2f}")
    print("\n| members | chars/s (best) | forward passes (smollm2, gemma) | tokens fed |")
    print("|---|---:|---|---|")
    for kind, result in results.items():
        st = result.stats
        passes = ", ".join(str(v) for v in st.forward_passes.values())
        fed = ", ".join(str(v) for v in st.tokens_fed.values())
        print(f"| {kind} | {best[kind]:.2f} | {passes} | {fed} |")
    print(f"\nllama.cpp / transformers = {best['llama.cpp'] / best['transformers']:.2f}x")
    same = results["llama.cpp"].text == results["transformers"].text
    print(f"greedy texts equal: {same}")
    for kind, result in results.items():
        print(f"{kind}: {result.text!r}")


if __name__ == "__main__":
    main()
