"""What a served member's top-k costs CharED: next-character distributions and bits per character.

    python benchmarks/topk.py [--chars 160] [--ks 20,100,1000] [--threads 1]

A served member sees only the top-k next tokens (with their full-softmax
log-probs). This measures, exactly and without a server, what that does to a
SmolLM2 + Gemma-3 ensemble (0.5/0.5 mixture): both members are the embedded
transformers models seen through `TopKBackend` (backends/topk.py), and the
ensemble's next-byte distribution is walked along each text of
benchmarks/texts/ (the first --chars characters), teacher-forced, as exact
mode's scoring does (every tokenization summed; scoring.score_exact). At each
byte we compare the truncated ensemble's distribution q with the full one p:

- TV = 1/2 sum |p - q| (mean and max over steps);
- KL(p || q) in bits (mean over steps where it is finite, and the number of
  steps where q gives 0 to a byte p allows: KL = inf there);
- bits per character of the text under q (inf if some byte got 0), against
  the full distribution's;
- whether greedy CharED generation (chared mode, 80 chars) gives the same text.

Both treatments of the missing mass are measured: "drop" (renormalise over the
k tokens: the served member's default) and "spread" (missing mass spread over
the other tokens).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from chared_flows.decoding import Ensemble, Member, MemberAssets
from chared_flows.decoding.backends.topk import TopKBackend
from chared_flows.decoding.exact import ExactBeam
from chared_flows.decoding.utf8 import split_complete

TEXTS = Path(__file__).resolve().parent / "texts"
PROMPT = "Question: A baker makes 24 muffins in the morning and 18 in the afternoon. He sells 30. How many are left?\nAnswer:"


def truncated(member: Member, k: int | None, rest: str) -> Member:
    if k is None:
        return member
    a = member.assets
    backend = TopKBackend(a.backend, k, rest=rest)
    return Member(MemberAssets(f"{a.name}@top{k}-{rest}", a.tokenizer, a.vocab, a.index, backend,
                               a.context_window, a.source, a.model))


def walk(ens: Ensemble, text: str) -> tuple[list[np.ndarray | None], list[float]]:
    """The ensemble's next-byte distribution before each byte of text, and each byte's log-prob (score_exact)."""
    sessions = [m.open_session("") for m in ens.members]
    beams = [ExactBeam(s, ens.beam_width, ens.prune_threshold) for s in sessions]
    data = text.encode("utf-8")
    dists, logprobs = [], []
    for i, byte in enumerate(data):
        pending = split_complete(data[:i])[1]
        combined = ens.combine([b.distribution(pending) if b.alive else None for b in beams], ens.weights)
        total = combined.sum() if combined.size else 0.0
        dists.append(combined / total if total > 0 else None)
        logprobs.append(math.log(combined[byte] / total) if total > 0 and combined[byte] > 0 else -math.inf)
        for beam in beams:
            if beam.alive:
                beam.advance(byte)
    return dists, logprobs


def compare(full: list[np.ndarray], trunc: list[np.ndarray | None]) -> tuple[list[float], list[float]]:
    tvs, kls = [], []
    for p, q in zip(full, trunc):
        if q is None:
            tvs.append(1.0)
            kls.append(math.inf)
            continue
        tvs.append(0.5 * float(np.abs(p - q).sum()))
        support = p > 0
        if np.any(q[support] == 0):
            kls.append(math.inf)
        else:
            kls.append(float((p[support] * np.log2(p[support] / q[support])).sum()))
    return tvs, kls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=160, help="characters of each text walked")
    parser.add_argument("--ks", default="20,100,1000")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gen-chars", type=int, default=80)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    members = [Member.load("smollm2"), Member.load("gemma3-270m")]
    texts = {p.stem: p.read_text()[: args.chars] for p in sorted(TEXTS.glob("*.txt"))}
    print(f"# top-k benchmark: SmolLM2-135M + Gemma-3-270M (transformers, fp32), mixture 0.5/0.5, exact-mode walk; "
          f"texts {', '.join(texts)} ({args.chars} chars each); threads={torch.get_num_threads()}")

    def ensemble(k, rest, mode="exact"):
        return Ensemble([truncated(m, k, rest) for m in members], weights=[0.5, 0.5], mode=mode)

    full = {name: walk(ensemble(None, "drop"), text) for name, text in texts.items()}
    n_chars = sum(len(t) for t in texts.values())
    full_bits = -sum(sum(lp) for _, lp in full.values()) / math.log(2)
    full_text = ensemble(None, "drop", "chared").generate(PROMPT, max_new_chars=args.gen_chars).text
    print(f"full distribution: {full_bits / n_chars:.4f} bits/char over {n_chars} chars "
          f"(load + walk {time.perf_counter() - start:.0f} s)\n")
    print("| k | missing mass | mean TV | max TV | mean KL bits (finite steps) | steps KL=inf | bits/char | Δ bits/char | greedy text same |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for k in [int(x) for x in args.ks.split(",")]:
        for rest in ("drop", "spread"):
            tvs, kls, bits = [], [], 0.0
            for name, text in texts.items():
                dists, logprobs = walk(ensemble(k, rest), text)
                t, kl = compare(full[name][0], dists)
                tvs += t
                kls += kl
                bits += -sum(logprobs) / math.log(2)
            finite = [x for x in kls if math.isfinite(x)]
            same = ensemble(k, rest, "chared").generate(PROMPT, max_new_chars=args.gen_chars).text == full_text
            bpc = bits / n_chars
            print(f"| {k} | {rest} | {np.mean(tvs):.4f} | {max(tvs):.4f} | {np.mean(finite) if finite else math.nan:.5f} "
                  f"| {len(kls) - len(finite)}/{len(kls)} | {bpc:.4f} | {bpc - full_bits / n_chars:+.4f} | "
                  f"{'yes' if same else 'no'} |", flush=True)
    print(f"\ntotal {time.perf_counter() - start:.0f} s; greedy reference text: {full_text!r}")


if __name__ == "__main__":
    main()
