"""Engine benchmark on the two embedded models: the CharED loop against the members' own floor.

    python benchmarks/engine.py [--threads 1] [--chars 200]

Prints, from one run (ratios are measured side by side; these machines are
noisy, so compare ratios, not absolute times, between runs):
- ensemble characters/s (greedy, --chars characters after a fixed prompt);
- each member alone with transformers `generate` and its KV cache (tokens/s,
  and the per-token decode time t_k, prefill excluded);
- R = ensemble wall time / sum_k(forward passes_k x t_k), and R without the
  prompt's prefill pass;
- tokens fed per member after the prompt / the member's output tokens;
- one marginal step (split of the full vocabulary, the widest step) and the
  per-round preparation (softmax, sort gather, UTF-8 mask), per member;
- peak RSS.
"""

from __future__ import annotations

import argparse
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
    ids = session.token_ids(b"")
    state = session.round_state(ids, b"")
    index = member.assets.index
    start = time.perf_counter()
    for _ in range(repeats):
        index.split(state.sorted_probs, 0, len(index), 0)
    step = (time.perf_counter() - start) / repeats
    logits = session.runner.next_logits(ids)
    session.runner.next_logits = lambda _ids: logits  # time the preparation alone, not the model
    start = time.perf_counter()
    for _ in range(repeats // 4):
        session.round_state(ids, b"")
    prep = (time.perf_counter() - start) / (repeats // 4)
    return step, prep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (printed with every figure)")
    parser.add_argument("--chars", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    members = [Member.load("smollm2"), Member.load("gemma3-270m")]
    print(f"# engine benchmark: torch {torch.__version__}, threads={torch.get_num_threads()}, "
          f"load {time.perf_counter() - start:.1f} s")

    ens = Ensemble(members, weights=[0.5, 0.5])
    ens.generate(PROMPT, max_new_chars=10)  # warm-up: allocator, first-call costs
    result = ens.generate(PROMPT, max_new_chars=args.chars)
    st = result.stats

    rows, floor, floor_no_prefill = [], 0.0, 0.0
    for m, name in zip(members, ens.names):
        t_tok, t_first = per_token_time(m)
        passes = st.forward_passes[name]
        floor += passes * t_tok
        floor_no_prefill += (passes - 1) * t_tok
        prefill_extra = max(t_first - t_tok, 0.0)
        refed = (st.tokens_fed[name] - st.prompt_tokens[name]) / max(st.output_tokens[name], 1)
        step, prep = marginal_step_time(m)
        rows.append((name, len(m.assets.vocab), 1 / t_tok, t_tok * 1e3, passes, refed, step * 1e3, prep * 1e3, prefill_extra))

    prefill_total = sum(r[8] for r in rows)
    r_ratio = st.wall_time_s / floor
    r_no_prefill = (st.wall_time_s - prefill_total) / floor_no_prefill
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"\nensemble (0.5/0.5, greedy, {st.chars} chars, {st.rounds} rounds): "
          f"{st.chars_per_s:.1f} chars/s, wall {st.wall_time_s:.2f} s, finish={result.finish_reason}")
    print("\n| member | vocab rows | alone tok/s | t_k ms/token | ensemble passes | fed/output tokens | marginal step ms | round prep ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rows_n, tps, t_ms, passes, refed, step_ms, prep_ms, _ in rows:
        print(f"| {name} | {rows_n:,} | {tps:.1f} | {t_ms:.1f} | {passes} | {refed:.2f} | {step_ms:.3f} | {prep_ms:.2f} |")
    print(f"\nR = wall / sum(passes x t_k) = {r_ratio:.2f}   (target <= 1.2)")
    print(f"R without the prompt prefill pass = {r_no_prefill:.2f}")
    print(f"peak RSS = {rss_mb:,.0f} MB   threads={torch.get_num_threads()}")
    print(f"\noutput: {result.text!r}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
