"""The transformers backend's CPU output layer: stock (MKL via nn.Linear) against its fast kernels, side by side.

    taskset -c 1 python benchmarks/cpu_linear.py [--threads 1] [--models smollm2,gemma3-270m] [--repeats 3]

Part 1, one model call: N rows of one new token each on caches of 40-85 tokens
(`next_logits_batch`, as exact mode's batched passes), and a 100-token prefill; the
two kernels alternate within each repeat, the fastest repeat is printed.
Part 2, end to end, the kernels alternating: exact-mode scoring of benchmarks/texts/code.txt
(beam 8 / 3e-3) and 60 bytes of byte-argmax greedy after its first line (the
exact_vs_genlm benchmark's two jobs); the bits and the text must agree.
Every row carries the thread count and the 1-minute load average.
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

from benchmarks.exact_vs_genlm import load, project_byte_greedy, split_text  # noqa: E402
from chared_flows.decoding import Ensemble, Member  # noqa: E402
from chared_flows.decoding.backends import cpu_linear  # noqa: E402

KERNELS = ("stock", "onednn")
ROWS = (1, 2, 3, 4, 8, 16)


def use(model, kernels: str) -> None:
    cpu_linear.uninstall(model)
    if kernels == "onednn" and cpu_linear.install(model) != "onednn":
        raise SystemExit("oneDNN linear unavailable in this torch; nothing to compare")


def one_call(backend, ids: list[int], rows: int) -> float:
    """Seconds of one batched call: `rows` runners, each one token past its own cached prefix."""
    runners, sequences = [], []
    for i in range(rows):
        runner, length = backend.new_runner(), 40 + 3 * i
        runner.next_logits(ids[:length])
        runners.append(runner)
        sequences.append(ids[: length + 1])
    start = time.perf_counter()
    if rows == 1:
        runners[0].next_logits(sequences[0])
    else:
        backend.next_logits_batch(runners, sequences)
    return time.perf_counter() - start


def prefill(backend, ids: list[int]) -> float:
    start = time.perf_counter()
    backend.prefill(ids[:100])
    return time.perf_counter() - start


def calls_table(member: Member, repeats: int, threads: int) -> None:
    backend, model = member.assets.backend, member.assets.backend.model
    ids = member.encode((ROOT / "benchmarks" / "texts" / "prose.txt").read_text() * 3, add_special_tokens=False)
    jobs = [(f"{r} row{'s' if r > 1 else ''} x 1 token", lambda r=r: one_call(backend, ids, r)) for r in ROWS]
    jobs.append(("prefill 1 x 100 tokens", lambda: prefill(backend, ids)))
    best: dict[tuple[str, str], float] = {}
    for _ in range(repeats):
        for label, job in jobs:
            for kernels in KERNELS:
                use(model, kernels)
                seconds = job()
                best[label, kernels] = min(best.get((label, kernels), seconds), seconds)
    print(f"\n{member.name}: one model call, fastest of {repeats} (ms; threads={threads}, load {load()})")
    print("| call | stock ms | fast ms | speed-up | stock ms per row | fast ms per row |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, _ in jobs:
        rows = int(label.split()[0]) if "row" in label else 1
        stock, fast = best[label, "stock"] * 1000, best[label, "onednn"] * 1000
        print(f"| {label} | {stock:.1f} | {fast:.1f} | {stock / fast:.2f}x | {stock / rows:.1f} | {fast / rows:.1f} |")


def end_to_end(member: Member, repeats: int, threads: int) -> None:
    model = member.assets.backend.model
    prompt, cont = split_text((ROOT / "benchmarks" / "texts" / "code.txt").read_text())
    print(f"\n{member.name}: end to end, the kernels alternating (threads={threads})")
    print("| job | kernels | seconds | result | load |")
    print("|---|---|---:|---|---:|")
    results: dict[tuple[str, str], object] = {}
    for _ in range(repeats):
        for kernels in KERNELS:
            use(model, kernels)
            ens = Ensemble([member], mode="exact", beam_width=8, prune_threshold=3e-3)
            start = time.perf_counter()
            bits = ens.score("", prompt + cont).bits_per_char
            seconds = time.perf_counter() - start
            results["score", kernels] = bits
            print(f"| exact score, code, 8 / 3e-3 | {kernels} | {seconds:.2f} | {bits:.6f} bits/char | {load()} |", flush=True)
            greedy = project_byte_greedy(member, prompt.encode(), 60, 5, 0.05)
            results["greedy", kernels] = greedy.data
            print(f"| byte greedy, 60 bytes, 5 / 0.05 | {kernels} | {greedy.gen_s:.2f} | {greedy.rate:.1f} bytes/s "
                  f"| {load()} |", flush=True)
    same_bits = abs(results["score", "stock"] - results["score", "onednn"]) <= 1e-5 * abs(results["score", "stock"])
    same_text = results["greedy", "stock"] == results["greedy", "onednn"]
    print(f"bits agree to 1e-5 relative: {same_bits}; greedy text identical: {same_text} "
          f"({results['greedy', 'onednn']!r})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="smollm2,gemma3-270m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-end-to-end", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"torch {torch.__version__}, threads={threads}, CPUs allowed {affinity}, load at start {load()}")
    for name in args.models.split(","):
        member = Member.load(name, backend="transformers")
        calls_table(member, args.repeats, threads)
        if not args.skip_end_to_end:
            end_to_end(member, max(1, args.repeats - 1), threads)


if __name__ == "__main__":
    main()
