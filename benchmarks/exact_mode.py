"""Exact mode on the embedded real models: bits per character, rules, speed, pruned mass.

    python benchmarks/exact_mode.py [--threads 1] [--gen-chars 60] [--out docs/exact_mode_results.md]

For each text in benchmarks/texts/ the prompt is its first line or sentence
(ending at a token boundary for both tokenizers: the continuation starts with
a space or a newline) and the continuation is the rest.

1. Canonical vs exact, one member: canonical bits per byte = -sum log p(canonical
   tokens of the continuation) / bytes; exact = Ensemble([m], mode="exact").score.
2. Rules: each member's exact next-byte distributions are recorded once per
   text (members advance independently in exact mode, and every rule is a
   per-step function of those distributions), then mixture / product /
   adaptive are applied at weights 0.25 / 0.5 / 0.75 (weight of smollm2).
   One configuration is cross-checked against Ensemble.score.
3. Speed: greedy generation of --gen-chars characters, chared vs exact, same prompt.
Every figure is printed with the torch thread count.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_section  # noqa: E402
from chared_flows.decoding import Ensemble, Member  # noqa: E402
from chared_flows.decoding.combine import RULE_FUNCTIONS  # noqa: E402
from chared_flows.decoding.exact import DEFAULT_BEAM_WIDTH, DEFAULT_PRUNE_THRESHOLD, ExactBeam  # noqa: E402
from chared_flows.decoding.utf8 import split_complete  # noqa: E402

LN2 = math.log(2)
WEIGHTS = (0.25, 0.5, 0.75)


def split_text(text: str) -> tuple[str, str]:
    """Prompt = up to the first newline or sentence end; the continuation starts with "\n" or " "."""
    cuts = [i for i in (text.find("\n"), text.find(". ") + 1) if 0 < i < len(text) - 1]
    cut = min(cuts)
    return text[:cut], text[cut:]


def canonical_bits(member: Member, prompt: str, cont: str) -> tuple[float, int]:
    """-log2 P(canonical tokens of the continuation), and the number of those tokens."""
    session = member.open_session(prompt)
    head = session.ids.token_ids(b"")
    full = session.ids.token_ids(cont.encode())
    assert full[: len(head)] == head, "prompt tokens are not a prefix of the full tokenization"
    positions = {int(t): k for k, t in enumerate(member.assets.index.sorted_ids)}
    nats = 0.0
    for i in range(len(head), len(full)):
        probs, _ = session.next_token_probs(full[:i])
        nats -= math.log(probs[positions[full[i]]])
    return nats / LN2, len(full) - len(head)


def exact_distributions(member: Member, prompt: str, cont: str, **beam) -> tuple[list[np.ndarray], ExactBeam, float]:
    """The member's exact next-byte distribution before each byte of the continuation."""
    session = member.open_session(prompt)
    start = time.perf_counter()
    beam_state = ExactBeam.start(session, **beam)
    data = cont.encode()
    out = []
    for i, byte in enumerate(data):
        out.append(beam_state.distribution(split_complete(data[:i])[1]))
        beam_state = beam_state.advance(byte)  # persistent beams: advance returns the next one
    return out, beam_state, time.perf_counter() - start


def combined_bits(dists_a, dists_b, data: bytes, rule: str, w_a: float) -> float:
    weights = np.array([w_a, 1 - w_a])
    nats = 0.0
    for da, db, byte in zip(dists_a, dists_b, data):
        comb = RULE_FUNCTIONS[rule]([da, db], weights)
        nats -= math.log(comb[byte] / comb.sum())
    return nats / LN2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gen-chars", type=int, default=60)
    ap.add_argument("--out", default=str(ROOT / "docs" / "exact_mode_results.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    t0 = time.perf_counter()
    members = {name: Member.load(name, backend="transformers") for name in ("smollm2", "gemma3-270m")}
    say(f"Command: `python benchmarks/exact_mode.py --threads {args.threads} --gen-chars {args.gen_chars}`  ")
    say(f"torch threads: {threads}; torch {torch.__version__}; models loaded in {time.perf_counter() - t0:.1f} s  ")
    say(f"exact mode defaults: beam_width={DEFAULT_BEAM_WIDTH}, prune_threshold={DEFAULT_PRUNE_THRESHOLD:g}")
    say()
    texts = {p.stem: p.read_text() for p in sorted((ROOT / "benchmarks" / "texts").glob("*.txt"))}
    dists: dict[tuple[str, str], list[np.ndarray]] = {}

    say(f"## 1. One member: canonical tokenization vs exact mode (bits per byte; threads={threads})")
    say()
    say("| text | member | bytes | chars | canonical tokens | canonical bpb | exact bpb | exact bpc | pruned mass | forward passes | exact score s |")
    say("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, text in texts.items():
        prompt, cont = split_text(text)
        data = cont.encode()
        for mname, member in members.items():
            cbits, ntok = canonical_bits(member, prompt, cont)
            d, beam, secs = exact_distributions(member, prompt, cont)
            dists[(name, mname)] = d
            ebits = -sum(math.log(x[b]) for x, b in zip(d, data)) / LN2
            say(f"| {name} | {mname} | {len(data)} | {len(cont)} | {ntok} | {cbits / len(data):.4f} | "
                f"{ebits / len(data):.4f} | {ebits / len(cont):.4f} | {beam.pruned_mass:.2e} | "
                f"{beam.session.runner.forward_passes} | {secs:.1f} |")
    say()

    say(f"## 2. Bits per character by rule and weight (exact mode; w = weight of smollm2; threads={threads})")
    say()
    header = "| text | smollm2 | gemma3-270m | " + " | ".join(
        f"{r} {w}" for r in ("mixture", "product", "adaptive") for w in WEIGHTS) + " |"
    say(header)
    say("|" + "---|" * (3 + 9))
    for name, text in texts.items():
        prompt, cont = split_text(text)
        data, n = cont.encode(), len(cont)
        da, db = dists[(name, "smollm2")], dists[(name, "gemma3-270m")]
        cells = [combined_bits(da, db, data, "mixture", 1.0) / n, combined_bits(da, db, data, "mixture", 0.0) / n]
        cells += [combined_bits(da, db, data, r, w) / n for r in ("mixture", "product", "adaptive") for w in WEIGHTS]
        best = min(cells)
        say(f"| {name} | " + " | ".join(f"**{c:.4f}**" if c == best else f"{c:.4f}" for c in cells) + " |")
    say()

    # Cross-check the offline combination against the public API on one configuration.
    name = next(iter(texts))
    prompt, cont = split_text(texts[name])
    ens = Ensemble(list(members.values()), weights=[0.5, 0.5], mode="exact", rule="product")
    api = ens.score(prompt, cont)
    offline = combined_bits(dists[(name, "smollm2")], dists[(name, "gemma3-270m")], cont.encode(), "product", 0.5)
    say(f"Cross-check ({name}, product 0.5): Ensemble.score {api.total_bits:.6f} bits, offline {offline:.6f} bits.")
    say()

    say(f"## 3. Generation speed, chared vs exact (greedy, {args.gen_chars} chars; threads={threads})")
    say()
    say("| members | mode | prompt | bytes | s | bytes/s | forward passes | pruned mass |")
    say("|---|---|---|---|---|---|---|---|")
    prompt = split_text(texts["prose"])[0]
    for label, ms in (("smollm2", ["smollm2"]), ("gemma3-270m", ["gemma3-270m"]), ("both 0.5/0.5", list(members))):
        for mode in ("chared", "exact"):
            ens = Ensemble([members[m] for m in ms], mode=mode)
            res = ens.generate(prompt, max_new_chars=args.gen_chars)
            st = res.stats
            pruned = max(st.pruned_mass.values()) if st.pruned_mass else 0.0
            say(f"| {label} | {mode} | prose line | {st.bytes} | {st.wall_time_s:.1f} | "
                f"{st.bytes / st.wall_time_s:.2f} | {st.total_forward_passes} | "
                f"{pruned:.2e} |" if mode == "exact" else
                f"| {label} | {mode} | prose line | {st.bytes} | {st.wall_time_s:.1f} | "
                f"{st.bytes / st.wall_time_s:.2f} | {st.total_forward_passes} | - |")
    say()
    write_section(Path(args.out), "exact_mode", "\n".join(lines))
    print(f"wrote {args.out} (section exact_mode)")


if __name__ == "__main__":
    main()
