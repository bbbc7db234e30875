"""Where a decoding's CPU goes, from py-spy's raw stacks, by the engine's parts.

    py-spy record --format raw --rate 50 -o stacks.txt -- taskset -c 1 python benchmarks/batch.py --modes exact
    python benchmarks/profile_stacks.py stacks.txt

Each sample is charged to the innermost frame that belongs to a part below (model forward,
softmax, beam bookkeeping, ...); a thread blocked in a wait is counted apart (it uses no
CPU). Only the decoding's threads are counted (samples under generate / generate_batch,
the decoding workers and the schedulers' workers), not model loading.
"""

from __future__ import annotations

import sys
from collections import Counter

PARTS = [
    ("model forward (backend)", ("decoding/backends/transformers.py", "decoding/backends/llamacpp.py", "torch/nn/")),
    ("softmax + gather to host (MemberSession.probs)", ("probs (chared_flows/decoding/members.py",)),
    ("prefix index splits", ("chared_flows/decoding/index.py",)),
    ("greedy search", ("chared_flows/decoding/search.py",)),
    ("exact beams", ("chared_flows/decoding/exact.py", "chared_flows/decoding/ahead.py")),
    ("rounds", ("chared_flows/decoding/rounds.py",)),
    ("scheduler", ("decoding/backends/scheduler.py",)),
    ("tokenizer", ("tokenization_utils", "chared_flows/decoding/token_track.py")),
]
DECODING = ("generate_batch", "work (chared_flows/decoding/batching.py", "_serve (chared_flows/decoding/backends/scheduler.py",
            "Ensemble.generate ")
WAITS = ("Condition.wait", "Event.wait", "Thread.join", "Thread._wait_for_tstate_lock", "Future.result")


def part_of(frames: list[str]) -> str:
    if frames[0].startswith(WAITS) or "acquire" in frames[0]:
        return "waiting (no CPU)"
    for frame in frames:
        for name, keys in PARTS:
            if any(k in frame for k in keys):
                return name
    return "other Python"


def main() -> None:
    counts: Counter = Counter()
    for line in open(sys.argv[1]):
        stack, _, n = line.rstrip().rpartition(" ")
        if not any(k in stack for k in DECODING):
            continue
        counts[part_of(stack.split(";")[::-1])] += int(n)
    busy = sum(n for part, n in counts.items() if part != "waiting (no CPU)")
    print("| part | samples | share of CPU samples |")
    print("|---|---:|---:|")
    for part, n in counts.most_common():
        share = "-" if part == "waiting (no CPU)" else f"{n / busy:.1%}"
        print(f"| {part} | {n} | {share} |")


if __name__ == "__main__":
    main()
