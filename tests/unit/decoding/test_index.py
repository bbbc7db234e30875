"""Marginals from the prefix index against brute-force sums over the vocabulary."""

import numpy as np
import pytest

from chared_flows.decoding.index import END, PrefixIndex
from chared_flows.decoding.utf8 import is_valid_prefix
from chared_flows.decoding.vocab import ByteVocabulary
from tests.fixtures.tiny import byte_fallback_tokenizer, byte_level_tokenizer


@pytest.fixture(scope="module", params=["byte_level", "byte_fallback"])
def index(request):
    tok = byte_level_tokenizer() if request.param == "byte_level" else byte_fallback_tokenizer()
    return PrefixIndex(ByteVocabulary.from_tokenizer(tok, num_rows=len(tok) + 3))


def brute_force(vocab, probs, prefix):
    """[mass of tokens starting with prefix+b for b in 0..255, mass of tokens equal to prefix]."""
    out = np.zeros(257)
    for token_id, data in enumerate(vocab.tokens):
        if data is None or not data.startswith(prefix):
            continue
        out[END if len(data) == len(prefix) else data[len(prefix)]] += probs[token_id]
    return out


def prefixes_to_check(vocab):
    texts = sorted({d for d in vocab.tokens if d}, key=lambda d: (-len(d), d))
    chosen = {b""}
    for data in texts[:40] + texts[-20:]:
        chosen.update(data[:k] for k in range(1, len(data) + 1))
    chosen.update([b"zzzz-not-a-prefix", "😀".encode()[:2], b" "])
    return sorted(chosen)


def test_split_equals_brute_force_to_1e_9(index):
    rng = np.random.default_rng(0)
    vocab = index.vocab
    for trial in range(3):
        # Heavy-tailed probabilities: many tiny masses next to a few large ones.
        probs = rng.dirichlet(np.full(len(vocab), 0.05 if trial else 1.0))
        sorted_probs = index.sort_probs(probs)
        for prefix in prefixes_to_check(vocab):
            lo, hi = index.prefix_range(prefix)
            got = index.split(sorted_probs, lo, hi, len(prefix)).masses
            want = brute_force(vocab, probs, prefix)
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=0, err_msg=repr(prefix))


def test_prefix_range_holds_exactly_the_tokens_with_that_prefix(index):
    vocab = index.vocab
    for prefix in prefixes_to_check(vocab):
        lo, hi = index.prefix_range(prefix)
        got = sorted(index.sorted_ids[lo:hi].tolist())
        want = [i for i, d in enumerate(vocab.tokens) if d and d.startswith(prefix)]
        assert got == want, prefix


def test_byte_ranges_of_a_split_narrow_to_the_longer_prefix(index):
    probs = np.full(len(index.vocab), 1.0 / len(index.vocab))
    sorted_probs = index.sort_probs(probs)
    split = index.split(sorted_probs, 0, len(index), 0)
    for byte in (ord(" "), ord("a"), 0xE4, 0xF0):
        assert split.byte_range(byte) == index.prefix_range(bytes([byte]))


def test_special_and_padded_rows_are_not_indexed(index):
    indexed = set(index.sorted_ids.tolist())
    for token_id, data in enumerate(index.vocab.tokens):
        assert (token_id in indexed) == (data is not None)


@pytest.mark.parametrize("pending", [b"", b"\xf0\x9f", b"\xe4", b"\xc3", b"\xed", b"\xf0\x9f\x98"])
def test_validity_mask_matches_brute_force(index, pending):
    mask = index.validity_mask(pending)
    for k, data in enumerate(index.sorted_bytes):
        assert mask[k] == is_valid_prefix(pending + data), (pending, data)
