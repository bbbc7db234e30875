"""Throughput of `chared run --ray` with 1 and 2 actors against a local run, side by side.

    python benchmarks/ray_scaling.py [--chars 60] [--batch 8] [--address HOST:PORT]

A GSM-style workflow of 8 questions x 2 variants (SmolLM2 alone; CharED of SmolLM2 and
Gemma-3 at 0.5/0.5, chared mode), greedy, --chars characters at most, run four ways by the
real `chared run` command, one after the other in one invocation:
  local        this process's threads, --batch-size B, 1 torch thread (no Ray);
  ray 1x1      one actor, 1 torch thread, B pairs at once;
  ray 2x1      two actors (each loads both members), 1 torch thread each, B pairs each;
  ray 1x2      one actor, 2 torch threads (the CPUs of 2x1 in one process).
For each: the decoding window (first pair's start to last pair's end, from the records:
model loading and actor start-up excluded) and characters/s over it, the command's whole
wall time (start-up and model loads included), torch threads, and the load average before
and after. Texts are compared with the local run's (batching can move float rounding).
Without --address a cluster is started at 127.0.0.1 (tests/support/ray_cluster.py: the
real `ray start --head`) and killed by pid at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.ray_cluster import LocalRayCluster, cluster_env  # noqa: E402
from benchmarks.questions import QUESTIONS  # noqa: E402


def workflow(chars: int) -> str:
    samples = ", ".join(json.dumps({"id": f"q{i}", "inputs": {"question": q}, "reference": 0})
                        for i, q in enumerate(QUESTIONS))
    return (
        "name: ray_bench\nversion: 1\ntemplate: math_answer@1\n"
        f"dataset: {{kind: inline, samples: [{samples}]}}\n"
        f"parser: number\nscorers: []\ndecoding: {{max_new_chars: {chars}, temperature: 0.0}}\n"
        "variants:\n  - {name: smollm2, models: [smollm2]}\n"
        "  - {name: chared, models: [smollm2, gemma3-270m], mode: chared, weights_sweep: [0.5]}\n"
    )


def run(project: Path, run_id: str, batch: int, threads: int, address: str | None, actors: int) -> dict:
    argv = [sys.executable, "-m", "chared_flows.cli", "run", "ray_bench", "--run-id", run_id, "--no-track",
            "--no-progress", "--batch-size", str(batch), "--threads", str(threads)]
    if address:
        argv += ["--ray", address, "--ray-actors", str(actors)]
    load_before = os.getloadavg()
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=project, env=cluster_env(), capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{run_id} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (project / "runs" / run_id / "records.jsonl").read_text().splitlines()]
    begin = min(r["timestamp"] - r["latency_s"] for r in rows)
    end = max(r["timestamp"] for r in rows)
    chars = sum(len(r["output"]) for r in rows)
    return {"run": run_id, "wall": wall, "window": end - begin, "chars": chars, "cps": chars / (end - begin),
            "load": (load_before, os.getloadavg()), "texts": {(r["sample_id"], r["variant"]): r["output"] for r in rows},
            "actors": [line for line in done.stderr.splitlines() if line.startswith("ray: actor")]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chars", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--address", help="an existing cluster (default: start one at 127.0.0.1)")
    args = parser.parse_args()
    project = Path(tempfile.mkdtemp(prefix="ray_bench"))
    shutil.copytree(ROOT / "templates", project / "templates")
    (project / "workflows").mkdir()
    (project / "workflows" / "ray_bench.yaml").write_text(workflow(args.chars))
    cluster = None if args.address else LocalRayCluster.start(head_cpus=2, worker_cpus=0)
    address = args.address or cluster.address
    print(f"cores: {os.cpu_count()}, {len(QUESTIONS)} questions x 2 variants, <= {args.chars} chars, "
          f"greedy, batch {args.batch} pairs per process; cluster {address}")
    try:
        results = [
            ("local (no Ray), 1 thread", run(project, "local", args.batch, 1, None, 0)),
            ("ray 1 actor x 1 thread", run(project, "ray1x1", args.batch, 1, address, 1)),
            ("ray 2 actors x 1 thread", run(project, "ray2x1", args.batch, 1, address, 2)),
            ("ray 1 actor x 2 threads", run(project, "ray1x2", args.batch, 2, address, 1)),
        ]
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(project, ignore_errors=True)
    base = results[0][1]
    print("\n| configuration | chars | decoding window s | chars/s | vs local | command wall s | "
          "texts = local | load avg before -> after |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, r in results:
        same = sum(r["texts"][k] == v for k, v in base["texts"].items())
        print(f"| {name} | {r['chars']} | {r['window']:.1f} | {r['cps']:.1f} | {r['cps'] / base['cps']:.2f}x | "
              f"{r['wall']:.1f} | {same}/{len(base['texts'])} | {r['load'][0][0]:.2f} -> {r['load'][1][0]:.2f} |")
    for name, r in results:
        for line in r["actors"]:
            print(f"  {name}: {line}")


if __name__ == "__main__":
    main()
