"""Fair A/B timing: the same workflow at --batch-size 1 and 8, latency ratios side by side.

    python benchmarks/ab_timing.py [--threads 1] [--samples 8] [--chars 60] [--mode exact]

Runs `chared ab` twice on one small GSM-style workflow (each model alone and CharED 0.5/0.5,
greedy, --chars characters), once at --batch-size 1 and once at 8, and prints per ensemble
latency(ensemble) / latency(single) for each single model at both batch sizes, with the
batch size each timing was taken at (records' `batch_size`), the thread count and the load
average. A variant's batch holds its own pairs only (flow/pairs.py: variant_batches), so
the two ratios should agree; the script says whether they do within 15%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def workflow_text(samples: int, chars: int, mode: str) -> str:
    return textwrap.dedent(f"""\
        name: ab_timing
        version: 1
        template: math_answer@1
        dataset: {{kind: gsm_symbolic, n: {samples}}}
        parser: number
        scorers: [numeric_exact_match]
        decoding: {{mode: {mode}, max_new_chars: {chars}, temperature: 0.0, stop: ["\\nQuestion:"]}}
        variants:
          - {{name: smollm2, models: [smollm2]}}
          - {{name: gemma3-270m, models: [gemma3-270m]}}
          - {{name: charED, models: [smollm2, gemma3-270m], weights: [0.5, 0.5]}}
        """)


def run_ab(workflow: Path, out: Path, batch: int, threads: int) -> tuple[list[dict], float]:
    cmd = [sys.executable, "-m", "chared_flows.cli", "ab", str(workflow), "--no-track", "--no-progress",
           "--out", str(out), "--run-id", f"b{batch}", "--batch-size", str(batch), "--threads", str(threads)]
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / f"b{batch}" / "records.jsonl").read_text().splitlines()]
    return rows, wall


def latencies(rows: list[dict]) -> dict[str, tuple[float, list[int]]]:
    by: dict[str, list[dict]] = {}
    for r in rows:
        if not r["error"]:
            by.setdefault(r["variant"], []).append(r)
    return {v: (statistics.mean(r["latency_s"] for r in rs), sorted({r["batch_size"] for r in rs}))
            for v, rs in by.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--chars", type=int, default=60)
    parser.add_argument("--mode", default="exact", choices=["exact", "chared"])
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        workflow = Path(tmp) / "ab_timing.yaml"
        workflow.write_text(workflow_text(args.samples, args.chars, args.mode))
        results = {}
        for batch in batches:
            load = os.getloadavg()[0]
            rows, wall = run_ab(workflow, Path(tmp) / "runs", batch, args.threads)
            results[batch] = latencies(rows)
            print(f"batch {batch}: wall {wall:.0f} s, threads {args.threads}, load before {load:.2f}, after "
                  f"{os.getloadavg()[0]:.2f}; mean latency: " + ", ".join(
                      f"{v} {lat:.2f} s (batches {sizes})" for v, (lat, sizes) in results[batch].items()))
    ok = True
    for ens in [v for v in results[batches[0]] if v not in ("smollm2", "gemma3-270m")]:
        for single in ("smollm2", "gemma3-270m"):
            ratios = [results[b][ens][0] / results[b][single][0] for b in batches]
            agree = max(ratios) / min(ratios) - 1 <= 0.15
            ok &= agree
            print(f"latency({ens}) / latency({single}): " + "  ".join(
                f"batch {b}: {r:.2f}x" for b, r in zip(batches, ratios)) +
                f"  -> {'agree' if agree else 'DIFFER'} within 15% ({max(ratios) / min(ratios) - 1:.1%})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
