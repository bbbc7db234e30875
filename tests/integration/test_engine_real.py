"""The engine on the two real embedded models (select with -m integration)."""

import pytest
import torch

from chared_flows.decoding import Ensemble, Member
from chared_flows.decoding.backends.transformers import CachedRunner, UncachedRunner
from tests.fixtures.reference_vocab import (
    assert_same_index,
    assert_same_vocabulary,
    reference_index,
    reference_vocabulary,
)

pytestmark = pytest.mark.integration

TRICKY = [
    "",
    "   leading and trailing   ",
    "\t\ttabs\tand\nnewlines\n\n\n",
    "emoji 😀🎉👍🏽 in a row",
    "CJK 你好，世界 and 日本語のテキスト",
    "combining e\u0301 a\u0308 n\u0303 and Zalgo z\u0336\u0317",
    "def f(x):\n    return x ** 2  # ünïcödé\n",
    "rare: \U0001d54f \u2603 \ufb01",
]
ARITHMETIC = "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:"
PYTHON_STUB = 'def is_even(n: int) -> bool:\n    """Return True if n is even."""\n'


@pytest.fixture(scope="module", params=["smollm2", "gemma3-270m"])
def member(request):
    return Member.load(request.param)


@pytest.fixture(scope="module")
def pair():
    return [Member.load("smollm2"), Member.load("gemma3-270m")]


def test_every_text_token_matches_the_tokenizers_own_decoding(member):
    vocab, tok = member.assets.vocab, member.tokenizer
    ids, texts = [], []
    for token_id, data in enumerate(vocab.tokens):
        if data is None:
            continue
        try:
            texts.append(data.decode("utf-8"))
            ids.append(token_id)
        except UnicodeDecodeError:
            pass  # half a character: no decoder can show it alone
    decoded = tok.batch_decode([[i] for i in ids])
    mismatches = [(i, t, d) for i, t, d in zip(ids, texts, decoded) if t != d]
    assert not mismatches, mismatches[:10]
    assert len(ids) > 0.9 * len(tok) - len(tok.added_tokens_decoder)
    for token_id in tok.all_special_ids:
        assert vocab.token_bytes(token_id) is None


def test_fast_vocabulary_and_index_equal_the_reference_build(member):
    vocab, tok = member.assets.vocab, member.tokenizer
    ref = reference_vocabulary(tok, num_rows=len(vocab), eos_token_ids=vocab.eos_token_ids)
    assert_same_vocabulary(vocab, ref)
    assert_same_index(member.assets.index, reference_index(vocab))


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_strings_round_trip_through_token_bytes(member, text):
    ids = member.encode(text, add_special_tokens=False)
    assert b"".join(member.assets.vocab.token_bytes(i) for i in ids) == text.encode("utf-8")


@pytest.mark.parametrize("prompt", [ARITHMETIC, PYTHON_STUB])
@pytest.mark.parametrize("mode", ["chared", "exact"])
def test_greedy_ensemble_of_both_gives_valid_deterministic_text(pair, prompt, mode):
    ens = Ensemble(pair, weights=[0.5, 0.5], mode=mode)
    first = ens.generate(prompt, max_new_chars=60)
    again = ens.generate(prompt, max_new_chars=60)
    assert first.text == again.text
    assert len(first.text) == 60 or first.finish_reason == "eos", (first.text, first.finish_reason)
    assert "\ufffd" not in first.text and first.finish_reason in ("stop", "eos", "length")
    assert first.text.strip(), "whitespace only: the prompt boundary broke the default decoding"


MATH_TEMPLATE = ('Solve the problem. End your answer with "The answer is N." where N is a number.\n\n'
                 "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:")


def test_exact_greedy_alone_answers_where_a_whitespace_token_beats_eos(member):
    """After "Answer:" SmolLM2's best token is " " (0.41), then "3"; EOS (0.11) beats " 3" joined (0.09).

    Exact greedy once compared the joined string with EOS and wrote nothing (the Ray A/B test's
    empty answers); both models alone must answer with the sum.
    """
    result = Ensemble([member], mode="exact").generate(MATH_TEMPLATE, max_new_chars=30)
    assert "8" in result.text, (result.text, result.finish_reason)


PARITY_PROMPTS = [
    ARITHMETIC,
    "The capital of France is",
    "def add(a, b):",
    "Once upon a time",
]


@pytest.mark.parametrize("prompt", PARITY_PROMPTS)
def test_greedy_with_one_member_reproduces_its_own_transformers_greedy_text(member, prompt):
    """Chared greedy over whole rounds, one member at weight 1 = the model's own greedy decoding.

    (Where the model's greedy token ends inside a character, e.g. half an emoji, greedy
    compares whole characters instead, by design; these prompts have no such token.)
    """
    session = member.open_session(prompt)
    ids = torch.tensor([session.ids.token_ids(b"")])
    out = member.assets.model.generate(ids, max_new_tokens=30, do_sample=False,
                                       pad_token_id=member.tokenizer.eos_token_id)
    want = member.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    got = Ensemble([member], mode="chared", token_healing=False).generate(prompt, max_new_chars=len(want))
    assert got.text == want[: len(got.text)] and (got.text == want or got.finish_reason == "eos"), (got.text, want)


def test_a_fact_both_members_know_survives_the_ensemble(pair):
    """SmolLM2 alone answers "Paris"; the default (exact) ensemble of both must too."""
    result = Ensemble(pair).generate("The capital of France is", max_new_chars=20, stop=["\n"])
    assert "Paris" in result.text, result.text


def test_chat_member_beside_a_raw_member(pair):
    smol_chat = pair[0].with_chat(True)
    result = Ensemble([smol_chat, pair[1]]).generate("What is 2+3?", max_new_chars=30)
    assert result.text.strip() and "\ufffd" not in result.text


def test_gemma_cache_rolls_back_past_its_sliding_window(pair):
    """Gemma-3 uses 512-token sliding windows; a rollback beyond them must stay exact."""
    gemma = pair[1]
    ids = gemma.encode("The quick brown fox jumps over the lazy dog. " * 60)[:600]
    cached, full = CachedRunner(gemma.assets.model), UncachedRunner(gemma.assets.model)
    for seq in (ids[:590], ids[:600], ids[:596] + ids[10:12], ids[:599]):
        torch.testing.assert_close(cached.next_logits(seq), full.next_logits(seq), rtol=1e-3, atol=1e-3)
    assert cached.cache_rebuilds == 0
