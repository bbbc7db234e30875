"""A served member's top-k error by text class: exact-mode bits/char, top-k vs the full distribution.

    python benchmarks/topk_classes.py [--ks 100,1000,4000,full] [--members smollm2,mix] [--rest spread]
                                      [--threads 1]

Texts: benchmarks/texts/classes/*.txt (benign prose, accented European text, emoji,
CJK, code with rare symbols). For each text and member set ("smollm2": SmolLM2-135M
alone; "mix": SmolLM2 + Gemma-3-270M, mixture 0.5/0.5), exact-mode
`Ensemble.score("", text)` is run once with full distributions (transformers, fp32) and
once per k with every member seen through `TopKBackend` (backends/topk.py: what a served
member gets, top k log-probs of the full softmax, the rest as `--rest` says). "full" as a
k is the member's whole vocabulary (the top-k window then holds everything: a check
that the window itself adds nothing).

Each member's forward passes are memoised by token ids for the length of one text, so
every k sees exactly the same logits as the full run and only the truncation differs.

Diagnosis (SmolLM2 alone): along the text's canonical tokenization (what one path of the
exact beam reads), how many tokens lie outside the top k, the mean mass outside the top k,
and the bits those tokens lose under the spread (log2 of true p over the spread value):
that is the part of the error the even spread of the missing mass costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chared_flows.decoding import Ensemble, Member  # noqa: E402
from chared_flows.decoding.backends.protocol import loop_batch  # noqa: E402
from chared_flows.decoding.backends.topk import TopKBackend, check_rest  # noqa: E402

TEXTS = ROOT / "benchmarks" / "texts" / "classes"
ORDER = ("prose", "accents", "emoji", "cjk", "code_symbols")


class MemoRunner:
    """Logits by token ids from a shared memo; the inner runner computes what is missing."""

    def __init__(self, backend: "MemoBackend"):
        self.backend, self.inner = backend, backend.inner.new_runner()

    forward_passes = property(lambda self: self.inner.forward_passes)
    tokens_fed = property(lambda self: self.inner.tokens_fed)
    cache_rebuilds = property(lambda self: self.inner.cache_rebuilds)

    def next_logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        key = tuple(int(i) for i in token_ids)
        memo = self.backend.memo
        if key not in memo:
            start = time.perf_counter()
            memo[key] = self.inner.next_logits(key).clone()  # the inner runner rolls its cache by ids
            self.backend.pass_seconds += time.perf_counter() - start
        return memo[key]

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def restore(self, snapshot: Any) -> None:
        self.inner.restore(snapshot)


class MemoBackend:
    kind = "memo"

    def __init__(self, inner: Any):
        self.inner, self.memo, self.pass_seconds = inner, {}, 0.0

    def new_runner(self) -> MemoRunner:
        return MemoRunner(self)

    def next_logits_batch(self, runners, token_ids):
        return loop_batch(runners, token_ids)

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()


def with_backend(member: Member, backend: Any, name: str) -> Member:
    return Member(dataclasses.replace(member.assets, name=name, backend=backend))


def exact_bits(members: list[Member], text: str) -> float:
    weights = [1.0 / len(members)] * len(members)
    ens = Ensemble(members, weights=weights, mode="exact") if len(members) > 1 else Ensemble(members, mode="exact")
    return ens.score("", text).total_bits


def canonical_tail(member: Member, text: str, k: int) -> tuple[int, int, float, float]:
    """Along the canonical tokens: (tokens, tokens outside top k, mean mass outside top k, bits the spread loses)."""
    session = member.open_session("")
    head, full = session.ids.token_ids(b""), session.ids.token_ids(text.encode("utf-8"))
    runner = member.assets.backend.new_runner()
    outside, tail_mass, lost = 0, 0.0, 0.0
    for i in range(len(head), len(full)):
        logits = runner.next_logits(full[:i])
        rows = len(member.assets.vocab)
        logp = torch.log_softmax(logits[:rows].double(), dim=-1)
        top = torch.topk(logp, min(k, rows))
        missing = max(0.0, 1.0 - float(top.values.exp().sum()))
        tail_mass += missing
        token = full[i]
        if token not in set(top.indices.tolist()):
            outside += 1
            spread = missing / (rows - min(k, rows))
            lost += (float(logp[token]) - math.log(spread)) / math.log(2) if spread > 0 else math.inf
    n = len(full) - len(head)
    return n, outside, tail_mass / max(n, 1), lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="100,1000,4000,full")
    parser.add_argument("--members", default="smollm2,mix")
    parser.add_argument("--rest", default="spread")
    parser.add_argument("--texts", default=",".join(ORDER))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rest = check_rest(args.rest)
    start = time.perf_counter()
    base = {"smollm2": Member.load("smollm2", backend="transformers")}
    sets = args.members.split(",")
    if "mix" in sets:
        base["gemma3"] = Member.load("gemma3-270m", backend="transformers")
    texts = {name: (TEXTS / f"{name}.txt").read_text() for name in args.texts.split(",")}
    print(f"# top-k by text class: exact mode, rest={rest}; threads={torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}; texts {', '.join(f'{n} ({len(t)} chars)' for n, t in texts.items())}",
          flush=True)
    rows = []
    for name, text in texts.items():
        memo = {m: MemoBackend(member.assets.backend) for m, member in base.items()}
        full_members = {m: with_backend(member, memo[m], m) for m, member in base.items()}

        def members_at(k):
            out = {}
            for m, member in full_members.items():
                if k is None:
                    out[m] = member
                    continue
                kk = len(member.assets.vocab) if k == "full" else int(k)
                out[m] = with_backend(
                    member, TopKBackend(memo[m], kk, rows=len(member.assets.vocab), rest=rest), f"{m}@top{k}")
            return out

        for s in sets:
            names = ["smollm2"] if s == "smollm2" else ["smollm2", "gemma3"]
            t0 = time.perf_counter()
            passes0 = {m: len(memo[m].memo) for m in names}
            secs0 = {m: memo[m].pass_seconds for m in names}
            ref = exact_bits([members_at(None)[m] for m in names], text)
            ref_s = time.perf_counter() - t0
            n_passes = sum(len(memo[m].memo) - passes0[m] for m in names)
            pass_s = sum(memo[m].pass_seconds - secs0[m] for m in names)
            for k in args.ks.split(","):
                t1 = time.perf_counter()
                bits = exact_bits([members_at(k)[m] for m in names], text)
                row = dict(text=name, set=s, k=k, chars=len(text), full=ref / len(text), topk=bits / len(text),
                           seconds=time.perf_counter() - t1, ref_seconds=ref_s, passes=n_passes, pass_s=pass_s)
                if s == "smollm2" and k != "full":
                    row["canon"] = canonical_tail(full_members["smollm2"], text, int(k))
                rows.append(row)
                canon = row.get("canon")
                extra = (f"; canonical tokens {canon[0]}, outside top k {canon[1]}, mean tail mass {canon[2]:.4f}, "
                         f"bits lost on them by the spread {canon[3]:.2f} ({canon[3] / len(text):+.4f}/char)"
                         if canon else "")
                print(f"{name:13s} {s:8s} k={k:>6s}: full {row['full']:.4f}, top-k {row['topk']:.4f}, "
                      f"Δ {row['topk'] - row['full']:+.4f} bits/char ({row['seconds']:.1f} s; full run {ref_s:.1f} s, "
                      f"{n_passes} passes){extra}", flush=True)
    print("\n| text | members | k | chars | bits/char full | bits/char top-k | Δ |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['text']} | {r['set']} | {r['k']} | {r['chars']} | {r['full']:.4f} | {r['topk']:.4f} "
              f"| {r['topk'] - r['full']:+.4f} |")
    print(f"\ntotal {time.perf_counter() - start:.0f} s; threads={torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
