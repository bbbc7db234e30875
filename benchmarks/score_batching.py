"""Exact-mode scoring: model calls per forward pass, with and without queuing later passes ahead.

    python benchmarks/score_batching.py [--threads 1] [--texts prose] [--members smollm2,gemma3-270m] [--backend transformers]

Scores each text of benchmarks/texts as exact_vs_genlm.py does (prompt read as bytes from
BOS: `Ensemble.score("", text)`, beam 8 / prune 1e-3 unless --beam/--prune say otherwise)
with scoring.SPECULATE off (each byte's owed passes, then wait) and on (the passes the known
text will owe later are queued with them: ahead.queue_beam_ahead), and prints per text x member:

- calls: batched model calls the member's scheduler made; rows: passes in them; the
  one-pass prefill of the canonical tokens is counted apart (1 call, not in rows);
- calls / pass: calls / rows (the issue's target: <= 0.4 on English at 8 / 1e-3);
- used: passes the beam consumed (rows minus speculated passes whose path was pruned first);
- bits of the text (must agree between the two runs up to float rounding) and wall time.
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

from chared_flows.decoding import Ensemble, Member, scoring  # noqa: E402
from chared_flows.decoding.backends.scheduler import scheduler_for  # noqa: E402


def measure(member: Member, text: str, speculate: bool, beam: int, prune: float) -> dict:
    scoring.QUEUE_AHEAD = speculate
    scheduler = scheduler_for(member.assets.backend)
    calls, rows = scheduler.batches, scheduler.passes
    start = time.perf_counter()
    result = Ensemble([member], mode="exact", beam_width=beam, prune_threshold=prune).score("", text)
    wall = time.perf_counter() - start
    calls, rows = scheduler.batches - calls, scheduler.passes - rows
    return {"calls": calls, "rows": rows, "bits": result.total_bits, "wall_s": wall,
            "passes": result.forward_passes[member.name]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--texts", default="prose")
    parser.add_argument("--members", default="smollm2,gemma3-270m")
    parser.add_argument("--beam", type=int, default=8)
    parser.add_argument("--prune", type=float, default=1e-3)
    parser.add_argument("--backend", default="transformers", help="backend of the members (auto, transformers, llama_cpp)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads {args.threads}, beam {args.beam} / prune {args.prune}, backend {args.backend}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| text | member | speculate | calls | rows | calls / pass | passes (session) | bits | wall s | load |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for spec in args.members.split(","):
        member = Member.load(spec, backend=args.backend)
        for name in args.texts.split(","):
            text = (ROOT / "benchmarks" / "texts" / f"{name}.txt").read_text()
            for speculate in (False, True):
                m = measure(member, text, speculate, args.beam, args.prune)
                ratio = m["calls"] / m["rows"] if m["rows"] else float("nan")
                print(f"| {name} | {spec} | {'on' if speculate else 'off'} | {m['calls']} | {m['rows']} | {ratio:.2f} | "
                      f"{m['passes']} | {m['bits']:.3f} | {m['wall_s']:.1f} | {os.getloadavg()[0]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
