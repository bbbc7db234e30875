"""What a served member's top-k costs CharED: next-character distributions and bits per character.

    python benchmarks/topk.py [--chars 160] [--ks 20,100,1000] [--threads 1]

A served member sees only the top-k next tokens (with their full-softmax
log-probs). This measures, exactly and without a server, what that does to a
SmolLM2 + Gemma-3 ensemble (0.5/0.5 mixture): both embedded models run by
transformers, seen through `TopKBackend` (backends/topk.py) with the missing
mass spread over the other tokens ("spread", the served member's default) or
dropped ("drop": renormalise over the k). Along each text of benchmarks/texts/
(its first --chars characters), teacher-forced:

1. The ensemble's next-character distribution at every byte, as exact mode
   defines it (each member sums over every tokenization of the text so far,
   scoring.score_exact): q with top-k members, p with full ones. TV = 1/2
   sum|p - q| (mean, max over steps), the mass p puts where q has none (mean;
   KL(p || q) is infinite whenever that is > 0, so we report this instead),
   and the bytes of the text that q gives 0. A member whose beam meets such a
   byte loses all its paths and is out for the rest of the text; when both
   are out, every later step counts as TV 1 and as a byte with q = 0.
2. Bits per character of the texts: exact mode (step 1's byte log-probs) and
   chared mode (Ensemble.score: the procedure's own probability of the text,
   summed over round boundaries); inf when some byte got probability 0.
3. Greedy CharED generation (chared mode, 80 chars after a fixed prompt):
   the same text as with full distributions?
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
PROMPT = ("Question: A baker makes 24 muffins in the morning and 18 in the afternoon. He sells 30. "
          "How many are left?\nAnswer: Let's think step by step.")


def truncated(member: Member, k: int | None, rest: str) -> Member:
    if k is None:
        return member
    a = member.assets
    backend = TopKBackend(a.backend, k, rest=rest)
    return Member(MemberAssets(f"{a.name}@top{k}-{rest}", a.tokenizer, a.vocab, a.index, backend,
                               a.context_window, a.source, a.model))


def walk(ens: Ensemble, text: str) -> tuple[list[np.ndarray | None], list[float]]:
    """Exact mode's next-byte distribution before each byte of text, and each byte's log-prob (as score_exact)."""
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
    """Per step: TV(p, q) and the mass p puts where q has none (a dead ensemble: 1 and 1)."""
    tvs, outside = [], []
    for p, q in zip(full, trunc):
        if q is None:
            tvs.append(1.0)
            outside.append(1.0)
            continue
        tvs.append(0.5 * float(np.abs(p - q).sum()))
        outside.append(float(p[q == 0].sum()))
    return tvs, outside


def bits_per_char(total_bits: float, n_chars: int) -> float:
    return math.inf if not math.isfinite(total_bits) else total_bits / n_chars  # nan: a byte had probability 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=160, help="characters of each text walked")
    parser.add_argument("--ks", default="20,100,1000")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gen-chars", type=int, default=80)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    members = [Member.load("smollm2", backend="transformers"), Member.load("gemma3-270m", backend="transformers")]
    texts = {p.stem: p.read_text()[: args.chars] for p in sorted(TEXTS.glob("*.txt"))}
    print(f"# top-k benchmark: SmolLM2-135M + Gemma-3-270M (transformers, fp32), mixture 0.5/0.5; "
          f"texts {', '.join(texts)} ({args.chars} chars each); threads={torch.get_num_threads()}")

    def ensemble(k, rest, mode="chared"):
        return Ensemble([truncated(m, k, rest) for m in members], weights=[0.5, 0.5], mode=mode)

    ks = [int(x) for x in args.ks.split(",")]
    configs = [(None, "drop")] + [(k, rest) for k in ks for rest in ("spread", "drop")]
    n_chars = sum(len(t) for t in texts.values())
    walks, bpc, score_bpc, same = {}, {}, {}, {}
    full_text = ensemble(None, "drop").generate(PROMPT, max_new_chars=args.gen_chars).text
    for c in configs:
        walks[c] = {name: walk(ensemble(*c, mode="exact"), text) for name, text in texts.items()}
        bpc[c] = bits_per_char(-sum(sum(lp) for _, lp in walks[c].values()) / math.log(2), n_chars)
        score_bpc[c] = bits_per_char(sum(ensemble(*c).score("", t).total_bits for t in texts.values()), n_chars)
        same[c] = ensemble(*c).generate(PROMPT, max_new_chars=args.gen_chars).text == full_text
        print(f"# {c}: done at {time.perf_counter() - start:.0f} s", flush=True)
    full = configs[0]
    print(f"\nfull distributions: {bpc[full]:.4f} bits/char (exact), {score_bpc[full]:.4f} bits/char "
          f"(chared, Ensemble.score); {n_chars} chars\n")
    print("| k | missing mass | mean TV | max TV | mean p-mass outside q | text bytes with q=0 "
          "| bits/char exact (Δ) | bits/char chared (Δ) | greedy text same |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for c in configs[1:]:
        tvs, outs, zeros = [], [], 0
        for name in texts:
            t, out = compare(walks[full][name][0], walks[c][name][0])
            tvs += t
            outs += out
            zeros += sum(1 for lp in walks[c][name][1] if lp == -math.inf)
        print(f"| {c[0]} | {c[1]} | {np.mean(tvs):.4f} | {max(tvs):.4f} | {np.mean(outs):.4f} "
              f"| {zeros}/{len(tvs)} | {bpc[c]:.4f} ({bpc[c] - bpc[full]:+.4f}) "
              f"| {score_bpc[c]:.4f} ({score_bpc[c] - score_bpc[full]:+.4f}) | {'yes' if same[c] else 'no'} |")
    print(f"\ntotal {time.perf_counter() - start:.0f} s; threads={torch.get_num_threads()}; "
          f"greedy reference text: {full_text!r}")


if __name__ == "__main__":
    main()
