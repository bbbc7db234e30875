"""What the engine needs from a model: the backend protocol.

A *backend* is one loaded model (transformers in process, llama.cpp in process,
a served model over HTTP, ...). The engine asks it for:

- `new_runner()`: a `TokenRunner`, one sequence's view of the model that keeps its
  own KV state between calls (prefix reuse is the runner's job);
- `next_logits_batch(runners, ids)`: the next-token logits of several sequences at
  once (the backend may batch them into one forward pass; the default loops);
- `identity()`: what tracking records about the model (kind, source, ...).

The token -> bytes table, the canonical tokenizer and the EOS ids live in
`MemberAssets` (backends/assets.py), next to the backend: every backend here takes token
ids in and gives logits out, and tokenization is always the HF tokenizer's.

Logits are a 1-D float tensor over the model's output rows (padded rows
included), on whatever device the backend computes on. A backend that only
sees a truncated distribution (a served top-k) returns -inf for the rows it
was not given: the softmax then renormalises over what it saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class TokenRunner(Protocol):
    """One sequence's view of a model; counters feed GenerationStats."""

    forward_passes: int
    tokens_fed: int
    cache_rebuilds: int

    def next_logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        """1-D float logits of the token after `token_ids`."""

    def snapshot(self) -> Any:
        """An opaque handle on the runner's current state (ids and KV), valid until discarded.

        Restoring it later, into this runner or another runner of the same backend,
        continues from that state. Taking a snapshot must be cheap (no copy of the
        KV cache); the runner copies on its next write instead.
        """

    def restore(self, snapshot: Any) -> None:
        """Continue from a state taken by `snapshot()`; the snapshot stays valid."""


class Backend(Protocol):
    kind: str

    def new_runner(self) -> TokenRunner:
        ...

    def next_logits_batch(self, runners: Sequence[TokenRunner], token_ids: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        ...

    def identity(self) -> dict[str, Any]:
        ...


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids two sequences share (a runner keeps that much of its KV cache)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def loop_batch(runners: Sequence[TokenRunner], token_ids: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """The trivial batch: one runner call after another."""
    if len(runners) != len(token_ids):
        raise ValueError(f"{len(runners)} runners for {len(token_ids)} id sequences; pass one per runner")
    return [runner.next_logits(ids) for runner, ids in zip(runners, token_ids)]


class FactoryBackend:
    """A backend made of a runner factory (custom or scripted models, test doubles)."""

    def __init__(self, factory: Callable[[], TokenRunner], kind: str = "custom", **identity: Any):
        self._factory = factory
        self.kind = kind
        self._identity = {"kind": kind, **identity}

    def new_runner(self) -> TokenRunner:
        return self._factory()

    def next_logits_batch(self, runners: Sequence[TokenRunner], token_ids: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        return loop_batch(runners, token_ids)

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)


@dataclass
class PassCounts:
    forward_passes: int = 0
    tokens_fed: int = 0
    cache_rebuilds: int = 0

    @classmethod
    def of(cls, runner: Any) -> "PassCounts":
        return cls(runner.forward_passes, runner.tokens_fed, runner.cache_rebuilds)

    def __add__(self, other: "PassCounts") -> "PassCounts":
        return PassCounts(self.forward_passes + other.forward_passes, self.tokens_fed + other.tokens_fed,
                          self.cache_rebuilds + other.cache_rebuilds)

    def __sub__(self, other: "PassCounts") -> "PassCounts":
        return PassCounts(self.forward_passes - other.forward_passes, self.tokens_fed - other.tokens_fed,
                          self.cache_rebuilds - other.cache_rebuilds)

    def add(self, other: "PassCounts") -> None:
        self.forward_passes += other.forward_passes
        self.tokens_fed += other.tokens_fed
        self.cache_rebuilds += other.cache_rebuilds
