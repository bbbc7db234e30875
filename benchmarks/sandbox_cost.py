"""What isolation costs: the 164 canonical HumanEval solutions, three ways, side by side.

    python benchmarks/sandbox_cost.py [--limit 164] [--rounds 2]

- plain: one `python -I` subprocess per problem running prompt + solution + tests +
  check(entry_point), exit status 0 = pass (no boundary at all; what the audit-hook
  sandbox cost, less its hook);
- unsandboxed judge + worker: the scorer's two-process protocol without bubblewrap
  (what CHARED_UNSAFE_EXEC=1 runs where bwrap is missing);
- bubblewrap: `run_check` as `pass_at_1` runs it.
The rounds alternate, so a busy machine slows every variant alike; compare ratios.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from chared_flows.evaluation import load_dataset
from chared_flows.evaluation import sandbox


def plain(p) -> bool:
    ref = p.reference
    program = p.inputs["prompt"] + p.meta["canonical_solution"] + "\n" + ref["test"] + f"\ncheck({ref['entry_point']})\n"
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-I", "-c", program], cwd=tmp, env={}, capture_output=True, timeout=30)
    return done.returncode == 0


def checked(box: sandbox.Box):
    def run(p) -> bool:
        original = sandbox.box_for
        sandbox.box_for = lambda unsafe=False: box
        try:
            return sandbox.run_check(p.inputs["prompt"], p.meta["canonical_solution"], p.reference["test"],
                                     p.reference["entry_point"]).passed
        finally:
            sandbox.box_for = original
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=164)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    problems = load_dataset({"kind": "humaneval", "limit": args.limit})
    variants = {
        "plain subprocess": plain,
        "judge + worker, unsandboxed": checked(sandbox.Box((), sandbox._own_python(), False)),
        "judge + worker, bubblewrap": checked(sandbox.box_for()),
    }
    print(f"{len(problems)} problems, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for round_ in range(args.rounds):
        for name, run in variants.items():
            start = time.monotonic()
            passed = sum(run(p) for p in problems)
            took = time.monotonic() - start
            print(f"round {round_ + 1}  {name:30s} {passed}/{len(problems)} passed  {took:6.1f} s"
                  f"  {1000 * took / len(problems):5.1f} ms/problem")


if __name__ == "__main__":
    main()
