"""llama.cpp members (llama-cpp-python, extra `llamacpp`) on the embedded GGUF models.

Checks: KV reuse gives the logits of a fresh context; snapshots restore exactly
(sequence copies, the re-feed fallback, a full cache); tokenization matches the
HF tokenizer the engine uses; logits agree with the transformers backend on the
same GGUF file (llama.cpp computes with the Q4 weights, transformers with their
dequantised fp32 copy, so they are close, not equal); greedy CharED text.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (extra `llamacpp`: make setup-llamacpp)")

from chared_flows.decoding import Ensemble, Member  # noqa: E402
from chared_flows.decoding.backends.llamacpp import LlamaCppBackend  # noqa: E402
from chared_flows.decoding.backends.specs import gguf_path  # noqa: E402
from chared_flows.decoding.backends.files import default_cache_dir  # noqa: E402
from chared_flows.errors import ConfigError, ContextWindowError  # noqa: E402

pytestmark = pytest.mark.integration

ALIASES = ["smollm2", "gemma3-270m"]
TEXTS = [
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer: 8",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Café crème, naïve résumé — déjà vu! 你好，世界。 😀",
]
PROMPT = "Question: A baker makes 24 muffins and sells 9. How many are left?\nAnswer:"


@pytest.fixture(scope="module", params=ALIASES)
def pair(request):
    """(llama.cpp member, transformers member) of one embedded model."""
    return Member.load(f"llama_cpp:{request.param}"), Member.load(request.param)


def rewrites(ids: list[int]) -> list[list[int]]:
    """Id sequences as rounds produce them: grow, rewrite the tail, shrink, jump back."""
    n = len(ids)
    return [ids[: n // 2], ids[: n // 2 + 1], ids[: n // 2 + 1], ids[: n // 2 - 2] + ids[n - 3:],
            ids, ids[: n - 4], ids[:3], ids]


def kl_nats(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    p, q = torch.log_softmax(p_logits.double(), -1), torch.log_softmax(q_logits.double(), -1)
    return float((p.exp() * (p - q)).sum())


def assert_same_distribution(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal up to llama.cpp's batch-split rounding (see the next test): same argmax, KL < 0.05 nats."""
    assert int(got.argmax()) == int(want.argmax()) and kl_nats(want, got) < 0.05


def test_kv_reuse_gives_the_logits_of_a_fresh_context(pair):
    """llama.cpp's kernels round differently for a 1-token batch than for a longer one (its server
    docs warn of this for cache_prompt), so a prefix fed in other splits gives other logits.
    SmolLM2 (Q4_1) on this short text: bit-equal (not on batches of ~100+ tokens). Gemma-3
    (Q4_K_M): up to ~1.3 apart (max abs), KL up to 0.022 nats (measured on TEXTS[1]), the same
    order as the distance of either to the fp32 model (KL 0.003-0.009). Checked: not flash
    attention, not the KV cache type, not weight repacking."""
    member = pair[0]
    backend = member.assets.backend
    exact = member.name.endswith("smollm2")
    cached = backend.new_runner()
    sequences = rewrites(member.encode(TEXTS[1]))
    for ids in sequences:
        got, want = cached.next_logits(ids), backend.new_runner().next_logits(ids)
        if exact:
            assert torch.equal(got, want)
        else:
            assert_same_distribution(got, want)
    assert cached.forward_passes == len(sequences) - 1  # the repeated sequence cost no pass
    assert cached.tokens_fed < sum(len(ids) for ids in sequences) / 2


def test_snapshots_restore_exactly_and_stay_valid(pair):
    member = pair[0]
    backend = member.assets.backend
    ids = member.encode(TEXTS[0])
    runner = backend.new_runner()
    runner.next_logits(ids[:10])
    snap = runner.snapshot()
    a = runner.next_logits(ids[:10] + ids[12:20])  # diverge
    runner.restore(snap)
    assert torch.equal(runner.next_logits(ids[:10]), snap.logits)  # no pass: the snapshot's logits
    b = runner.next_logits(ids[:11])
    runner.restore(snap)  # the snapshot is still valid after the runner moved on from it
    c = runner.next_logits(ids[:11])
    other = backend.new_runner()
    other.restore(snap)  # another runner: re-feeds from its own cache
    d = other.next_logits(ids[:11])
    fresh = backend.new_runner()
    want_b, want_a = fresh.next_logits(ids[:11]), fresh.next_logits(ids[:10] + ids[12:20])
    for got, want in ((b, want_b), (c, want_b), (d, want_b), (a, want_a)):
        assert_same_distribution(got, want)


@pytest.mark.parametrize("n_ctx, seqs, length", [(256, 1, 6), (256, 4, 130)])
def test_without_spare_sequences_or_cache_cells_snapshots_fall_back_to_refeeding(n_ctx, seqs, length):
    """(256, 1, 6): one spare sequence for three snapshots; (256, 4, 130): each branch overflows the
    cache's 256 cells (llama.cpp pads the cache to a multiple of 256)."""
    path = gguf_path("smollm2", default_cache_dir())
    backend, reference = LlamaCppBackend(path, n_ctx=n_ctx, snapshot_seqs=seqs), LlamaCppBackend(path, n_ctx=n_ctx)
    tokens = list(range(1000, 1400))
    runner = backend.new_runner()
    snaps = []
    for branch in range(3):
        ids = [1] + tokens[branch * 10: branch * 10 + length]
        runner.next_logits(ids)
        snaps.append((ids, runner.snapshot()))
    if seqs == 1:
        assert [s.seq is not None for _, s in snaps] == [True, False, False]
    else:  # each branch found no room and dropped the older snapshots' sequences
        assert [s.generation for _, s in snaps] == [0, 1, 2]
    for ids, snap in reversed(snaps):
        runner.restore(snap)
        nxt = ids + [42]
        assert_same_distribution(runner.next_logits(nxt), reference.new_runner().next_logits(nxt))
    with pytest.raises(ContextWindowError, match=f"do not fit the llama.cpp context of {n_ctx}"):
        runner.next_logits(list(range(100, 100 + n_ctx + 1)))


def test_llama_cpp_spec_options(tmp_path):
    member = Member.load("llama_cpp:smollm2?n_ctx=512&threads=1&snapshot_seqs=3")
    backend = member.assets.backend
    assert (backend.n_ctx, backend.threads, backend.snapshot_seqs, member.assets.context_window) == (512, 1, 3, 512)
    with pytest.raises(ConfigError, match="llama_cpp option 'ctx' .* is unknown; use: n_ctx, threads, snapshot_seqs"):
        Member.load("llama_cpp:smollm2?ctx=512")
    with pytest.raises(ConfigError, match="llama_cpp option n_ctx='0' .* is not an integer >= 1"):
        Member.load("llama_cpp:smollm2?n_ctx=0")


def test_llama_cpp_tokenization_equals_the_hf_tokenizers(pair):
    """We always feed HF ids; this checks that llama.cpp's own tokenizer would agree (it does on these texts)."""
    member = pair[0]
    lib = member.assets.backend.lib
    vocab = member.assets.backend.model.vocab
    for text in TEXTS:
        data = text.encode()
        buf = (lib.llama_token * (len(data) + 8))()
        n = lib.llama_tokenize(vocab, data, len(data), buf, len(buf), True, False)
        assert list(buf[:n]) == member.encode(text), text


def test_logits_agree_with_transformers_on_the_same_gguf(pair):
    """Q4 weights in llama.cpp vs their fp32 dequantisation in transformers: close, not equal."""
    llama, hf = pair
    kls, top1 = [], []
    for text in TEXTS:
        ids = hf.encode(text)
        a, b = llama.assets.backend.new_runner(), hf.assets.backend.new_runner()
        for end in range(4, len(ids) + 1, 3):
            la, lb = a.next_logits(ids[:end]).double(), b.next_logits(ids[:end]).double()
            pa, pb = torch.log_softmax(la, -1), torch.log_softmax(lb, -1)
            kls.append(float((pb.exp() * (pb - pa)).sum()))
            top1.append(int(la.argmax()) == int(lb.argmax()))
    assert sum(kls) / len(kls) < 0.02 and max(kls) < 0.2, kls
    assert sum(top1) / len(top1) >= 0.9, top1


def test_greedy_text_equals_the_transformers_members_where_the_logits_agree():
    """Q4 in llama.cpp vs fp32 in transformers: equal greedy text where no choice is a near-tie.

    A factual prompt whose answer both members are sure of; on open-ended text a near-tie
    between two units flips with logits this close (see the README's agreement table).
    """
    llama = [Member.load(f"llama_cpp:{a}") for a in ALIASES]
    hf = [Member.load(a) for a in ALIASES]
    prompt = "The capital of France is"
    for mode, chars in (("chared", 12), ("exact", 12)):  # exact mode uses the snapshots
        a = Ensemble(llama, weights=[0.5, 0.5], mode=mode).generate(prompt, max_new_chars=chars, stop=["\n"])
        b = Ensemble(hf, weights=[0.5, 0.5], mode=mode).generate(prompt, max_new_chars=chars, stop=["\n"])
        assert a.text == b.text and "Paris" in a.text, (mode, a.text, b.text)
