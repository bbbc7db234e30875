"""The llama.cpp runner's snapshots across contexts, on a fake llama.cpp context (no binding, no model).

Exact mode forks every beam path onto a new runner, so a snapshot is restored into another
context than the one it was taken in. Before state copies, that restore re-fed the whole
prompt + text from position 0 at every pass (the 99 s exact-mode score of a 286-character
text); now the snapshot carries its sequence's KV state and the new context loads it.

The fake context is a list of token ids for sequence 0 (and one per spare sequence); its
logits are a function of the ids it holds, and `decode` checks that it continues exactly
the positions held, so a runner that believes its cache holds something it does not fails.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from chared_flows.decoding.backends.llamacpp import LlamaCppRunner, LlamaPrefill

VOCAB = 16


def fake_logits(ids) -> torch.Tensor:
    g = torch.Generator().manual_seed(hash(tuple(ids)) % (2**31))
    return torch.randn(VOCAB, generator=g)


class FakeContext:
    def __init__(self):
        self.seqs: dict[int, list[int]] = {0: []}
        self.generation = 0
        self.free_seqs = [3, 2, 1]
        self.fed: list[int] = []
        self.loads = 0

    def free_queued(self):
        pass

    def queue_release(self, generation, seq):
        pass

    def take_seq(self):
        return self.free_seqs.pop() if self.free_seqs else None

    def remove(self, seq, start):
        self.seqs[seq] = self.seqs.get(seq, [])[:start]
        return True

    def copy(self, src, dst):
        self.seqs[dst] = list(self.seqs.get(src, []))

    def drop_snapshots(self):
        self.seqs = {0: self.seqs[0]}
        self.generation += 1

    def decode(self, tokens, start):
        assert start == len(self.seqs[0]), "decoding at a position the cache does not continue"
        self.seqs[0] = self.seqs[0] + list(tokens)
        self.fed.extend(tokens)
        return 0

    def last_logits(self):
        return fake_logits(self.seqs[0])

    def export(self, seq=0):
        return tuple(self.seqs[seq])

    def load(self, data, keep):
        self.loads += 1
        self.seqs[0] = list(data[:keep])
        return True


def fake_backend(state_copies: bool = True):
    contexts: list[FakeContext] = []

    def take():
        contexts.append(FakeContext())
        return contexts[-1]

    return SimpleNamespace(n_ctx=1000, source="fake", state_copies=state_copies, contexts=contexts,
                           _take_context=take, _return_context=lambda context: None)


IDS = list(range(1, 61))  # a prompt + text of 60 tokens


@pytest.mark.parametrize("state_copies", [True, False])
def test_a_snapshot_restored_in_another_context_feeds_only_the_new_token(state_copies):
    backend = fake_backend(state_copies)
    parent = LlamaCppRunner(backend)
    parent.next_logits(IDS)
    snap = parent.snapshot()
    child = LlamaCppRunner(backend)  # exact mode's fork: a new runner, so a new context
    child.restore(snap)
    got = child.next_logits(IDS + [7])
    assert torch.equal(got, fake_logits(IDS + [7]))
    assert backend.contexts[1] is not backend.contexts[0]
    if state_copies:
        assert (child.tokens_fed, child.state_loads) == (1, 1)
    else:  # the fallback: correct, but the whole sequence again
        assert (child.tokens_fed, child.state_loads) == (len(IDS) + 1, 0)


def test_a_restored_snapshot_gives_its_logits_without_a_pass_and_chains():
    backend = fake_backend()
    runner = LlamaCppRunner(backend)
    first = runner.next_logits(IDS)
    snap = runner.snapshot()
    child = LlamaCppRunner(backend)
    child.restore(snap)
    assert torch.equal(child.next_logits(IDS), first) and child.forward_passes == 0
    assert child.snapshot() is snap  # not moved: the same state
    child.next_logits(IDS + [5])
    grandchild = LlamaCppRunner(backend)
    grandchild.restore(child.snapshot())
    assert torch.equal(grandchild.next_logits(IDS + [5, 6]), fake_logits(IDS + [5, 6]))
    assert grandchild.tokens_fed == 1


def test_a_restore_whose_state_shares_less_than_the_cache_keeps_the_cache():
    backend = fake_backend()
    runner = LlamaCppRunner(backend)
    runner.next_logits(IDS[:5])
    snap = runner.snapshot()
    other = LlamaCppRunner(backend)
    other.next_logits(IDS)
    other.restore(snap)
    assert torch.equal(other.next_logits(IDS + [9]), fake_logits(IDS + [9]))
    assert other.state_loads == 0 and backend.contexts[1].fed[-1:] == [9]


def test_prefill_snapshots_load_the_whole_state_cut_to_their_prefix():
    backend = fake_backend()
    logits = torch.stack([fake_logits(IDS[: k + 1]) for k in range(len(IDS))])
    prefill = LlamaPrefill(IDS, logits, state=tuple(IDS))
    assert prefill.covers(IDS[:10]) and not prefill.covers(IDS[:10] + [0]) and not prefill.covers([])
    assert torch.equal(prefill.logits_after(IDS[:10]), fake_logits(IDS[:10]))
    runner = LlamaCppRunner(backend)
    runner.restore(prefill.snapshot_after(IDS[:10]))
    assert torch.equal(runner.next_logits(IDS[:10] + [99]), fake_logits(IDS[:10] + [99]))
    assert (runner.tokens_fed, runner.state_loads) == (1, 1)
    assert backend.contexts[0].seqs[0] == IDS[:10] + [99]
