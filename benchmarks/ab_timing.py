"""Fair A/B timing: the same workflow at --batch-size 1 and 8, latency ratios side by side.

    python benchmarks/ab_timing.py [--threads 1] [--samples 8] [--chars 60] [--mode exact]

Runs `chared ab` twice on one small GSM-style workflow (each model alone and CharED 0.5/0.5,
greedy, --chars characters), once at --batch-size 1 and once at 8 (its default timed
sub-sample: the first 4 samples of every variant decode alone), and prints per ensemble
latency(ensemble) / latency(single) as the A/B compares it (the pairs that decoded alone,
the same samples in both runs) at both batch sizes, and, for information, the ratio of the
batched pairs (a batch holds one variant's pairs only, but SmolLM2 gains more from
batching than Gemma-3, so that ratio moves with the batch size). With the batch size each
timing was taken at (records' `batch_size`), the thread count and the load average. The
script says whether the compared ratios agree within 15%.
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


def latencies(rows: list[dict], samples: set[str] | None, batched: bool = False) -> dict[str, float]:
    """Mean latency per variant over `samples` (None: all), of the pairs alone or of the batched ones."""
    by: dict[str, list[float]] = {}
    for r in rows:
        if r["error"] or (samples is not None and r["sample_id"] not in samples):
            continue
        if (r["batch_size"] > 1) == batched:
            by.setdefault(r["variant"], []).append(r["latency_s"])
    return {v: statistics.mean(values) for v, values in by.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--chars", type=int, default=60)
    parser.add_argument("--mode", default="exact", choices=["exact", "chared"])
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        workflow = Path(tmp) / "ab_timing.yaml"
        workflow.write_text(workflow_text(args.samples, args.chars, args.mode))
        for batch in batches:
            load = os.getloadavg()[0]
            rows, wall = run_ab(workflow, Path(tmp) / "runs", batch, args.threads)
            runs[batch] = rows
            sizes = sorted({r["batch_size"] for r in rows})
            print(f"batch {batch}: wall {wall:.0f} s, threads {args.threads}, load before {load:.2f}, "
                  f"after {os.getloadavg()[0]:.2f}; pairs per batch seen: {sizes}")
    # the samples every run timed alone: the sub-sample of the largest batch size
    timed = {r["sample_id"] for r in runs[max(batches)] if r["batch_size"] == 1}
    compared = {b: latencies(rows, timed) for b, rows in runs.items()}
    ok = True
    singles = ("smollm2", "gemma3-270m")
    for ens in [v for v in compared[batches[0]] if v not in singles]:
        for single in singles:
            ratios = [compared[b][ens] / compared[b][single] for b in batches]
            spread = max(ratios) / min(ratios) - 1
            ok &= spread <= 0.15
            print(f"latency({ens}) / latency({single}) as compared ({len(timed)} samples alone): " + "  ".join(
                f"--batch-size {b}: {r:.2f}x" for b, r in zip(batches, ratios)) +
                f"  -> {'agree' if spread <= 0.15 else 'DIFFER'} within 15% ({spread:.1%})")
            batched = latencies(runs[max(batches)], None, batched=True)
            if ens in batched and single in batched:
                print(f"  for information, the batched pairs at --batch-size {max(batches)}: "
                      f"{batched[ens] / batched[single]:.2f}x ({batched[ens]:.2f} s vs {batched[single]:.2f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
