"""Engine benchmark on the two embedded models: the CharED loop against the members' own floor.

    python benchmarks/engine.py [--threads 1] [--chars 200]

Prints, from one run (ratios are measured side by side; these machines are
noisy, so compare ratios, not absolute times, between runs):
- ensemble characters/s (greedy, --chars characters after a fixed prompt);
- each member alone with transformers `generate` and its KV cache (tokens/s,
  and the per-token decode time t_k, prefill excluded);
- R_sum = ensemble wall time / sum over members of (prefill_k + (passes_k - 1) x t_k):
  the cost against running the members one after the other;
- R_max = ensemble wall time / (max_k prefill_k + rounds x max_k t_k): against the
  slowest member alone, the floor when the members of a round run at the same time
  (they do: one worker thread per member, chared_flows/decoding/backends/scheduler.py);
- tokens fed per member after the prompt / the member's output tokens;
- one marginal step (split of the full vocabulary, the widest step) and the
  per-round preparation (softmax, sort gather, UTF-8 mask), per member;
- peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import torch

from chared_flows.decoding import Ensemble, Member

PROMPT = (
    "Question: A baker makes 24 muffins in the morning and 18 in the afternoon. "
    "He sells 30 of them. How many muffins are left?\nAnswer: Let's think step by step."
)


def per_token_time(member: Member, n_tokens: int = 48, repeats: int = 2) -> tuple[float, float]:
    """(decode seconds per token, prefill+first-token seconds) of transformers' own generate."""
    model, tok = member.assets.model, member.tokenizer
    ids = torch.tensor([member.encode(PROMPT)])
    kwargs = dict(do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)

    def timed(n: int) -> float:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
            best = min(best, time.perf_counter() - start)
            assert out.shape[1] == ids.shape[1] + n
        return best

    one, many = timed(1), timed(n_tokens)
    return (many - one) / (n_tokens - 1), one


def marginal_step_time(member: Member, repeats: int = 200) -> tuple[float, float]:
    """(seconds per widest marginal step, seconds per round preparation) on this member's vocabulary."""
    session = member.open_session(PROMPT)
    ids = session.ids.token_ids(b"")
    index = member.assets.index
    sorted_probs, _ = session.next_token_probs(ids)
    start = time.perf_counter()
    for _ in range(repeats):
        index.split(sorted_probs, 0, len(index), 0)
    step = (time.perf_counter() - start) / repeats
    logits = session.runner.next_logits(ids)
    start = time.perf_counter()
    for _ in range(repeats // 4):
        probs, _ = session.probs(logits)  # softmax, gather into sorted order, to the host
        probs * index.validity_mask(b"")  # the UTF-8 mask
    prep = (time.perf_counter() - start) / (repeats // 4)
    return step, prep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (printed with every figure)")
    parser.add_argument("--chars", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    members = [Member.load("smollm2", backend="transformers"), Member.load("gemma3-270m", backend="transformers")]
    print(f"# engine benchmark: torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"cores={os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, models loaded in "
          f"{time.perf_counter() - start:.1f} s")

    ens = Ensemble(members, weights=[0.5, 0.5], mode="chared")
    ens.generate(PROMPT, max_new_chars=10)  # warm-up: allocator, first-call costs
    result = ens.generate(PROMPT, max_new_chars=args.chars)
    st = result.stats

    rows = []
    for m, name in zip(members, ens.names):
        t_tok, t_first = per_token_time(m)
        passes = st.forward_passes[name]
        refed = (st.tokens_fed[name] - st.prompt_tokens[name]) / max(st.output_tokens[name], 1)
        step, prep = marginal_step_time(m)
        rows.append(dict(name=name, vocab=len(m.assets.vocab), t_tok=t_tok, t_first=t_first, passes=passes,
                         refed=refed, step=step, prep=prep))

    r_sum = st.wall_time_s / sum(r["t_first"] + (r["passes"] - 1) * r["t_tok"] for r in rows)
    r_max = st.wall_time_s / (max(r["t_first"] for r in rows) + (st.rounds - 1) * max(r["t_tok"] for r in rows))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"\nensemble (chared, 0.5/0.5, greedy, {st.chars} chars, {st.rounds} rounds): "
          f"{st.chars_per_s:.1f} chars/s, wall {st.wall_time_s:.2f} s, finish={result.finish_reason}")
    print("\n| member | vocab rows | alone tok/s | t_k ms/token | prefill ms | ensemble passes | fed/output tokens "
          "| marginal step ms | round prep ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['vocab']:,} | {1 / r['t_tok']:.1f} | {r['t_tok'] * 1e3:.1f} | "
              f"{r['t_first'] * 1e3:.0f} | {r['passes']} | {r['refed']:.2f} | {r['step'] * 1e3:.3f} | "
              f"{r['prep'] * 1e3:.2f} |")
    print(f"\nR_max = wall / (slowest prefill + rounds x slowest t_k) = {r_max:.2f}   (target <= 1.3)")
    print(f"R_sum = wall / sum over members (prefill + passes x t_k) = {r_sum:.2f}")
    print(f"peak RSS = {rss_mb:,.0f} MB   threads={torch.get_num_threads()}   "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"\noutput: {result.text!r}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
