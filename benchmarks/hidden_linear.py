"""Why a batch of 8 does not cost 1/8 per row on this CPU: the hidden layers' products, row by row.

    taskset -c 1 python benchmarks/hidden_linear.py [--threads 1]

Each hidden linear layer of the two embedded models (random fp32 weights of the same
shapes), at the row counts exact mode's batched passes feed, through three kernels side by
side: stock `F.linear` (MKL sgemm), oneDNN's linear (what the output layer uses,
backends/cpu_linear.py) and MKL's packed sgemm (what torch.compile's freezing emits for
fp32 CPU linears). The weights stay in cache between calls, so these are the products'
best case; fastest of 5 repeats, microseconds per call, with GFLOP/s of stock.
Every row carries the thread count and the 1-minute load average.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable

import torch
import torch.nn.functional as F

SHAPES = {  # (out, in) of each distinct hidden linear layer
    "smollm2 q, o": (576, 576), "smollm2 k, v": (192, 576), "smollm2 gate, up": (1536, 576),
    "smollm2 down": (576, 1536), "gemma3 q": (1024, 640), "gemma3 gate, up": (2048, 640),
    "gemma3 down": (640, 2048),
}
ROWS = (1, 2, 4, 8, 16)


def fastest_us(fn: Callable[[], torch.Tensor], calls: int = 200, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def kernels(x: torch.Tensor, weight: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    rows = x.shape[0]
    packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)
    return {
        "stock": lambda: F.linear(x, weight),
        "onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], ""),
        "mkl packed": lambda: torch.ops.mkl._mkl_linear(x, packed, weight, None, rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, CPUs allowed "
          f"{sorted(os.sched_getaffinity(0))}, load {os.getloadavg()[0]:.2f}")
    print("| layer | rows | stock us | oneDNN us | MKL packed us | stock vs 1 row | stock GFLOP/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (out_features, in_features) in SHAPES.items():
        weight = torch.randn(out_features, in_features)
        one_row = None
        for rows in ROWS:
            x = torch.randn(rows, in_features)
            want = F.linear(x, weight)
            times = {}
            for kernel, fn in kernels(x, weight).items():
                if not torch.allclose(fn(), want, rtol=1e-4, atol=1e-3):
                    raise SystemExit(f"{kernel} disagrees with F.linear on {name}, {rows} rows")
                times[kernel] = fastest_us(fn)
            one_row = one_row or times["stock"]
            gflops = 2 * rows * in_features * out_features / times["stock"] / 1e3
            print(f"| {name} | {rows} | {times['stock']:.0f} | {times['onednn']:.0f} | {times['mkl packed']:.0f} "
                  f"| {times['stock'] / one_row:.2f}x | {gflops:.0f} |", flush=True)
    print(f"load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
