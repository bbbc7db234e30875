"""What a served member sees: the top-k of a distribution, and what the engine does with the rest.

An inference server returns the k most likely next tokens with their
log-probabilities under the *full* softmax; the other tokens' mass
(1 - sum of the k probabilities) is known in total but not per token. Two
treatments, both exact functions of the k log-probs:

- "spread" (the default): the missing mass is spread evenly over the tokens
  not returned. Every byte keeps some probability, so scoring stays finite,
  and the tokens seen keep their true probabilities.
- "drop": the other tokens get -inf, so the engine's softmax renormalises over
  the k tokens it saw. A byte no top-k token starts with gets probability 0
  from this member: exact mode's beam for that member dies at such a byte and
  the member is out for the rest of the text; scoring gives -inf when every
  member misses a byte.

Measured (benchmarks/topk.py, README "Member backends"): with "drop", exact
scoring of plain texts dies within the first bytes at k = 20 and 100, and
still at k = 1000 on one text in three; "spread" moves bits per character by
+0.23 / +0.12 / -0.004 at k = 20 / 100 / 1000 and next-character TV by
0.11 / 0.06 / 0.014. Greedy text changed at k = 20 and 100 under both (a
character's probability sums every token starting with it, and the tail beyond
the top k matters), not at k = 1000. Hence the default, and k >= 1000 where
the server allows it. By text class (benchmarks/topk_classes.py, docs/performance.md) k = 1000
is within 0.01 bits/char on plain and accented text but not on emoji, CJK or rare code
symbols, where a few of the text's own tokens lie beyond the top k and the even share is far
from their probability, in either direction; only the whole vocabulary (top_k="all") is exact.

`TopKBackend` applies the same truncation to any in-process backend, so the
effect of k can be measured exactly against the full distribution
(benchmarks/topk.py) without a server.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from chared_flows.decoding.backends.protocol import Backend, TokenRunner, loop_batch
from chared_flows.errors import ConfigError

REST_TREATMENTS = ("spread", "drop")
DEFAULT_REST = "spread"
ALL = "all"  # top_k=all: the whole vocabulary, i.e. the full distribution (served: n_probs = the tokenizer's rows)


def check_top_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"top_k is {k!r}; give a positive integer number of tokens (e.g. 1000) or 'all'")
    return k


def check_rest(rest: str) -> str:
    if rest not in REST_TREATMENTS:
        raise ConfigError(f"rest {rest!r} is not a treatment of the missing mass; use one of: {', '.join(REST_TREATMENTS)}")
    return rest


def topk_logits(ids: Sequence[int], logprobs: Sequence[float], num_rows: int, rest: str = DEFAULT_REST) -> torch.Tensor:
    """Full-size logits from k (token id, log-probability) pairs; the rest as `rest` says."""
    out = torch.full((num_rows,), -math.inf, dtype=torch.float32)
    index = torch.as_tensor(list(ids), dtype=torch.long)
    values = torch.as_tensor(list(logprobs), dtype=torch.float32)
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= num_rows):
        bad = next(i for i in index.tolist() if not 0 <= i < num_rows)
        raise ValueError(f"token id {bad} is outside the member's {num_rows} output rows; is the tokenizer the server's?")
    if rest == "spread":
        missing = 1.0 - float(torch.exp(values.double()).sum())
        others = num_rows - len(set(index.tolist()))
        if missing > 0 and others > 0:
            out.fill_(math.log(missing / others))
    out[index] = values
    return out


def truncate(logits: torch.Tensor, k: int, rows: int | None = None, rest: str = DEFAULT_REST) -> torch.Tensor:
    """The logits a top-k server would give for these full logits (log-probs of the top k)."""
    rows = rows or logits.shape[0]
    logprobs = torch.log_softmax(logits[:rows].double(), dim=-1)
    top = torch.topk(logprobs, min(k, rows))
    out = topk_logits(top.indices.tolist(), top.values.tolist(), logits.shape[0], rest)
    return out


class TopKRunner:
    def __init__(self, inner: TokenRunner, k: int, rows: int | None, rest: str):
        self.inner, self.k, self.rows, self.rest = inner, k, rows, rest

    @property
    def forward_passes(self) -> int:
        return self.inner.forward_passes

    @property
    def tokens_fed(self) -> int:
        return self.inner.tokens_fed

    @property
    def cache_rebuilds(self) -> int:
        return self.inner.cache_rebuilds

    def next_logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        return truncate(self.inner.next_logits(token_ids), self.k, self.rows, self.rest)

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def restore(self, snapshot: Any) -> None:
        self.inner.restore(snapshot)


class TopKBackend:
    """Another backend, seen through a top-k window (rows: the tokenizer's rows, padding excluded)."""

    kind = "topk"

    def __init__(self, inner: Backend, k: int, *, rows: int | None = None, rest: str = DEFAULT_REST):
        self.inner, self.k, self.rows, self.rest = inner, check_top_k(k), rows, check_rest(rest)

    def new_runner(self) -> TokenRunner:
        return TopKRunner(self.inner.new_runner(), self.k, self.rows, self.rest)

    def next_logits_batch(self, runners: Sequence[TokenRunner], token_ids: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        return loop_batch(runners, token_ids)

    def identity(self) -> dict[str, Any]:
        return {**self.inner.identity(), "kind": f"topk({self.inner.kind})", "top_k": self.k, "rest": self.rest}
