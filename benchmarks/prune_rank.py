"""How pruning ranks a path inside a token: the mass it reads on (default) or its whole trie node.

    taskset -c 1 python benchmarks/prune_rank.py [--threads 1] [--texts code,prose] [--models smollm2,gemma3-270m]

exact.RANK_BY_NODE (see its comment in chared_flows/decoding/exact.py). Each text x model is
scored from BOS as exact_vs_genlm.py does (prompt + continuation read as bytes, continuation
bits by the chain rule), at settings from coarse to fine under both rules, side by side in
one run; the distance is from the best estimate (32 / 1e-5, default rule), as in that script.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import chared_flows.decoding.exact as exact  # noqa: E402
from benchmarks.exact_vs_genlm import project_score, split_text  # noqa: E402
from chared_flows.decoding import Member  # noqa: E402

SETTINGS = [(5, 0.05), (8, 0.01), (8, 3e-3), (8, 1e-3)]
BEST = (32, 1e-5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--texts", default="code,prose")
    ap.add_argument("--models", default="smollm2,gemma3-270m")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, threads={torch.get_num_threads()}, CPUs allowed "
          f"{sorted(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f}")
    print("\n| text | model | setting | rule | distance (bits) | passes | s | pruned | load |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for model in args.models.split(","):
        member = Member.load(model, backend="transformers")
        for name in args.texts.split(","):
            prompt, cont = split_text((ROOT / "benchmarks" / "texts" / f"{name}.txt").read_text())
            exact.RANK_BY_NODE = False
            best = project_score([member], prompt, cont, *BEST, 1).bits
            for width, threshold in SETTINGS:
                for node in (False, True):
                    exact.RANK_BY_NODE = node
                    s = project_score([member], prompt, cont, width, threshold, 1)
                    print(f"| {name} | {model} | {width} / {threshold:g} | {'node' if node else 'reads on'} | "
                          f"{abs(s.bits - best):.3f} | {s.passes} | {s.seconds:.1f} | {s.pruned:.3f} | "
                          f"{os.getloadavg()[0]:.2f} |", flush=True)
            exact.RANK_BY_NODE = False


if __name__ == "__main__":
    main()
