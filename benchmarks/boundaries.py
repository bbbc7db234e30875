"""Prompt boundaries: does greedy decoding stay sane when a prompt ends inside a token?

    python benchmarks/boundaries.py [--threads 1] [--chars 80] [--limit N] [--domains runs] [--out docs/boundaries.json]

48 prompts across prose, code, math, chat and runs (raw text, and chat messages rendered with
each member's chat template), each ending in a boundary-sensitive string: " ", "\\n",
"\\n    ", "\\t", ": ", "(", "\\n\\n" or half a word; the "runs" prompts end before a run
of a repeatable character (banners, rules, Markdown headings, zero-padded numbers), where
exact greedy once wrote runs of it. --domains picks a subset. For each member alone and for
CharED 0.5/0.5, greedy, --chars characters, in both modes (chared with its default token
healing, and exact), plus each member's own transformers greedy output on the
canonical prompt, it prints and stores:

- the degenerate rate: outputs that are whitespace only or hold a run of one character
  repeated 10 or more times (indentation, spaces right after a newline, excepted),
  counted only where the members' own transformers greedy output is not degenerate
  (for CharED: where at least one member's own output is not);
- bits per character of every output under the exact-mode scorer of the same ensemble,
  next to the bits per character of exact mode's own output (lower = the models find
  the text more probable; greedy should sit low).
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
import os
import re
import time
from pathlib import Path

import torch

from chared_flows.decoding import Ensemble, Member

RAW = [
    ("prose", "Once upon a time, "),
    ("prose", "The weather today is "),
    ("prose", "Dear Sir or Madam,\n"),
    ("prose", "My favourite animals are:\n\n"),
    ("prose", "The quick brown fox jum"),
    ("prose", "In conclusion, the results show that the new metho"),
    ("prose", "Title: A walk in the park\nAuthor: "),
    ("prose", "Ingredients:\n\t"),
    ("code", "def fibonacci(n):\n"),
    ("code", "def is_even(n: int) -> bool:\n    \"\"\"Return True if n is even.\"\"\"\n"),
    ("code", "class Stack:\n    def __init__(self):\n        "),
    ("code", "for i in range(10):\n    "),
    ("code", "import numpy as np\n\nx = np.array("),
    ("code", "# Compute the mean of a list\ndef mean(xs):\n\t"),
    ("code", "SELECT name, age FROM users WHERE "),
    ("code", "{\n  \"name\": \"Alice\",\n  \"age\": "),
    ("code", "def add(a, b):\n    return a + b\n\n"),
    ("math", "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer: "),
    ("math", "Q: What is 12 times 7?\nA:"),
    ("math", "Solve for x: 2x + 3 = 11.\nSolution:\n"),
    ("math", "The derivative of x^2 is "),
    ("math", "Let's compute 15 + 27 step by step.\n\n"),
    ("math", "Problem: A train travels 60 km in 1.5 hours. What is its average speed?\nSpeed = ("),
    ("math", "Step 1: 4 * 6 = 24\nStep 2:"),
    ("chat", "User: Hi! Can you tell me a joke?\nAssistant: "),
    ("chat", "User: What is the capital of Spain?\nAssistant:"),
    ("chat", "### Instruction:\nWrite a haiku about the sea.\n\n### Response:\n"),
    ("chat", "Human: Give me three tips for better sleep.\n\nAI: 1."),
    ("chat", "User: Translate 'good morning' into French.\nAssistant: In French, "),
    ("chat", "Customer: My order has not arrived yet.\nAgent: I'm sorry to hear th"),
]
# Prompts that end before a run of a repeatable character (banners, rules, Markdown
# headings, zero-padded numbers, tables, front matter): where exact greedy was myopic.
RUNS = [
    ("runs", 'def get_random_number_list(xs):\n    return xs\n\n\nif __name__ == "__main__":\n    '),
    ("runs", 'if __name__ == "__main__":\n    print("'),
    ("runs", "/*" + "*" * 38 + "\n * Copyright 2024 Example Inc.\n "),
    ("runs", "#" * 40 + "\n# Settings\n"),
    ("runs", "Results\n=======\n\nSummary\n"),
    ("runs", "Name        Score\n"),
    ("runs", "# User guide\n\n"),
    ("runs", "## Installation\n\nRun the script.\n\n#"),
    ("runs", "Invoice no. 000"),
    ("runs", "ID: 0000123\nID: 0000124\nID: "),
    ("runs", "print('=' * 40)\nprint('Report')\nprint('"),
    ("runs", "---\ntitle: Notes\ndate: 2024-01-01\n"),
    ("runs", "| name | value |\n|"),
    ("runs", "Ingredients:\n\t- flour\n\t"),
]
TEMPLATED = [
    ("chat-template", [{"role": "user", "content": "What is 2 + 2?"}]),
    ("chat-template", [{"role": "user", "content": "Write a Python function that reverses a string."}]),
    ("chat-template", [{"role": "user", "content": "Name three colours of the rainbow."}]),
    ("chat-template", [{"role": "system", "content": "You answer in one sentence."},
                       {"role": "user", "content": "Why is the sky blue?"}]),
]


DOMAINS = {d for d, _ in RAW + RUNS + TEMPLATED}


def degenerate(text: str) -> bool:
    if not text.strip():
        return True
    # Indentation (spaces right after a newline) is not a degenerate run.
    stripped = re.sub(r"(?<=\n) +", "", text)
    return re.search(r"(.)\1{9,}", stripped, flags=re.S) is not None


def hf_greedy(member: Member, prompt, chars: int) -> str:
    """The member's own transformers greedy output on its canonical tokenization of the prompt."""
    session = member.open_session(prompt)
    ids = torch.tensor([session.ids.token_ids(b"")])
    tok = member.tokenizer
    with torch.no_grad():
        out = member.assets.model.generate(
            ids, max_new_tokens=chars, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id
        )
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)[:chars]


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    smol, gemma = Member.load("smollm2", backend="transformers"), Member.load("gemma3-270m", backend="transformers")
    configs = {"smollm2": ([smol], None), "gemma3-270m": ([gemma], None), "chared-0.5": ([smol, gemma], [0.5, 0.5])}
    prompts = [(d, p, False) for d, p in RAW + RUNS] + [(d, p, True) for d, p in TEMPLATED]
    if args.domains:
        prompts = [row for row in prompts if row[0] in args.domains]
    prompts = prompts[: args.limit]
    rows = [{"domain": d, "prompt": p, "chat": chat, "own": {}, "outputs": {}, "bpc": {}} for d, p, chat in prompts]
    for row in rows:
        row["own"] = {m.name: hf_greedy(m.with_chat(row["chat"]), row["prompt"], args.chars) for m in (smol, gemma)}
    seconds = {}
    for name, (members, weights) in configs.items():
        for mode in ("chared", "exact"):
            start = time.perf_counter()
            for chat in (False, True):  # chat prompts: members render them with their own templates
                group = [r for r in rows if r["chat"] == chat]
                if not group:
                    continue
                ens = Ensemble([m.with_chat(chat) for m in members], weights=weights, mode=mode)
                results = ens.generate_batch([r["prompt"] for r in group], max_new_chars=args.chars)
                for r, result in zip(group, results):
                    r["outputs"][f"{name}/{mode}"] = result.text
            seconds[f"{name}/{mode}"] = time.perf_counter() - start
            print(f"{name}/{mode}: {seconds[f'{name}/{mode}']:.0f} s", flush=True)
    jobs = [(r, name, key) for r in rows for name in configs for key in r["outputs"] if key.startswith(name + "/")]

    def score(job):
        row, name, key = job
        members, weights = configs[name]
        text = row["outputs"][key]
        scorer = Ensemble([m.with_chat(row["chat"]) for m in members], weights=weights, mode="exact")
        row["bpc"][key] = scorer.score(row["prompt"], text).bits_per_char if text else None

    with ThreadPoolExecutor(max_workers=8) as pool:  # concurrent scorings share batched passes
        list(pool.map(score, jobs))
    return {"rows": rows, "threads": args.threads, "chars": args.chars, "seconds": seconds}


def summarise(result: dict) -> str:
    rows = result["rows"]
    keys = list(rows[0]["outputs"]) if rows else []
    lines = [
        f"{len(rows)} prompts, greedy, {result['chars']} characters, torch threads {result['threads']}",
        "",
        "| config | counted | degenerate | degenerate rate | mean bpc (exact scorer) | mean bpc of exact mode's output |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key in keys:
        name, _ = key.split("/")
        counted = degenerate_n = 0
        bpc, ref = [], []
        for row in rows:
            members = [name] if name in row["own"] else list(row["own"])
            if all(degenerate(row["own"][m]) for m in members):
                continue  # the members write degenerate text themselves here
            counted += 1
            degenerate_n += degenerate(row["outputs"][key])
            if row["bpc"][key] is not None and row["bpc"][f"{name}/exact"] is not None:
                bpc.append(row["bpc"][key])
                ref.append(row["bpc"][f"{name}/exact"])
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
        rate = degenerate_n / counted if counted else float("nan")
        lines.append(f"| {key} | {counted} | {degenerate_n} | {rate:.2f} | {mean(bpc):.3f} | {mean(ref):.3f} |")
    own_degenerate = {m: sum(degenerate(r["own"][m]) for r in rows) for m in (rows[0]["own"] if rows else [])}
    lines += ["", f"members' own transformers greedy outputs that are degenerate: {own_degenerate}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chars", type=int, default=80)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--domains", type=lambda v: v.split(","),
                        help=f"only these prompt domains, comma-separated (of {sorted(DOMAINS)})")
    parser.add_argument("--out", default="docs/boundaries.json")
    args = parser.parse_args()
    start = time.perf_counter()
    result = run(args)
    result["wall_s"] = time.perf_counter() - start
    result["load_average"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, ensure_ascii=False, indent=1))
    print(summarise(result))
    print(f"wall {result['wall_s']:.0f} s, load average {result['load_average'][0]:.2f}")


if __name__ == "__main__":
    main()
