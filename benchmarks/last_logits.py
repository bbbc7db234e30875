"""The output layer at the positions read only (`logits_to_keep`) against at every fed position.

    taskset -c 1 python benchmarks/last_logits.py [--threads 1] [--repeats 5]

A pass that feeds several tokens (a prompt's prefill; a batched step where a row owes
up to 4 new tokens) reads the logits of one position per row. Projecting every fed
position onto the vocabulary costs as much again as the rest of the model on Gemma-3
(262k rows). Both ways are timed alternately in one run, per model and shape, with the
thread count and load average; the logits read must agree (max |difference| printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chared_flows.decoding import Member  # noqa: E402
from chared_flows.decoding.backends.transformers import cache_argument, last_logits_only, new_cache  # noqa: E402

SHAPES = [(1, 40), (8, 4)]  # (rows, tokens fed per row): a prompt's prefill; a batched step at the new-token cap


def timed(model, ids: torch.Tensor, keep: dict) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, **{cache_argument(model): new_cache(model)}, **keep)
    return time.perf_counter() - start, out.logits[:, -1].float()


def compare(model, rows: int, width: int, repeats: int) -> tuple[float, float, float]:
    ids = torch.randint(10, 1000, (rows, width), generator=torch.Generator().manual_seed(0))
    keep = last_logits_only(model, torch.full((rows, 1), width - 1))
    all_s, last_s, diff = [], [], 0.0
    for _ in range(repeats):
        t_all, full = timed(model, ids, {})
        t_last, last = timed(model, ids, keep)
        all_s.append(t_all)
        last_s.append(t_last)
        diff = max(diff, float((full - last).abs().max()))
    return statistics.median(all_s), statistics.median(last_s), diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, threads={torch.get_num_threads()}, CPUs allowed "
          f"{sorted(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f}")
    print("\n| model | rows x tokens fed | every position ms | positions read ms | ratio | max abs diff | load |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in ("smollm2", "gemma3-270m"):
        model = Member.load(name, backend="transformers").assets.backend.model
        if not last_logits_only(model):
            print(f"| {name} | - | - | - | model has no logits_to_keep | - | - |")
            continue
        timed(model, torch.tensor([[10, 11]]), {})  # warm-up
        for rows, width in SHAPES:
            t_all, t_last, diff = compare(model, rows, width, args.repeats)
            print(f"| {name} | {rows} x {width} | {1000 * t_all:.0f} | {1000 * t_last:.0f} | "
                  f"{t_all / t_last:.2f}x | {diff:.1e} | {os.getloadavg()[0]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
