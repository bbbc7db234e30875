"""The fast vocabulary and index builds against the straightforward reference builds, array by array."""

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from chared_flows.decoding.index import PrefixIndex
from chared_flows.decoding.utf8 import incomplete_tail_start, valid_prefix_rows
from chared_flows.decoding.vocab import SENTENCEPIECE, ByteVocabulary
from chared_flows.errors import UnsupportedTokenizerError
from tests.fixtures.reference_vocab import (
    assert_same_index,
    assert_same_vocabulary,
    reference_index,
    reference_vocabulary,
)
from tests.fixtures.tiny import byte_fallback_tokenizer, byte_level_tokenizer


def _copy(tok):
    """A private copy of a cached tiny tokenizer, safe to add tokens to."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tok.backend_tokenizer.to_str()),
        bos_token=tok.bos_token, eos_token=tok.eos_token, pad_token=tok.pad_token,
    )


def _with_added_tokens(tok):
    """Added tokens of every kind: literal text outside the byte table, "▁" normalized or not, special."""
    tok = _copy(tok)
    tok.add_tokens([AddedToken("<table> é", normalized=False), AddedToken("\u2581hello\u2581", normalized=True),
                    AddedToken("\u2581raw", normalized=False), AddedToken("<0x41>x", normalized=False)])
    tok.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    return tok


def _unigram_tokenizer():
    """SentencePiece-style Unigram: the model object does not expose byte_fallback (full-JSON path)."""
    pieces = [("<unk>", 0.0), ("\u2581", -1.0), ("a", -2.0), ("b", -2.0), ("\u2581ab", -1.5), ("é", -3.0), ("<0x41>", -5.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


TOKENIZERS = {
    "byte_level": byte_level_tokenizer,
    "byte_fallback": byte_fallback_tokenizer,
    "byte_level+added": lambda: _with_added_tokens(byte_level_tokenizer()),
    "byte_fallback+added": lambda: _with_added_tokens(byte_fallback_tokenizer()),
    "unigram": _unigram_tokenizer,
}


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
@pytest.mark.parametrize("extra_rows", [0, 5, -20])
def test_fast_vocabulary_and_index_equal_the_reference_build(kind, extra_rows):
    tok = TOKENIZERS[kind]()
    rows = len(tok) + extra_rows
    eos = [i for i in (tok.eos_token_id, 3, rows + 2) if i is not None]
    fast = ByteVocabulary.from_tokenizer(tok, num_rows=rows, eos_token_ids=eos)
    ref = reference_vocabulary(tok, num_rows=rows, eos_token_ids=eos)
    assert_same_vocabulary(fast, ref)
    assert_same_index(PrefixIndex(fast), reference_index(fast))


def test_added_tokens_keep_their_literal_bytes():
    tok = _with_added_tokens(byte_fallback_tokenizer())
    vocab = ByteVocabulary.from_tokenizer(tok)
    assert vocab.token_bytes(tok.convert_tokens_to_ids("\u2581hello\u2581")) == b" hello "
    assert vocab.token_bytes(tok.convert_tokens_to_ids("\u2581raw")) == "\u2581raw".encode()
    assert vocab.token_bytes(tok.convert_tokens_to_ids("<0x41>x")) == b"<0x41>x"
    assert vocab.token_bytes(tok.convert_tokens_to_ids("<|tool|>")) is None


def test_unigram_sentencepiece_reads_byte_fallback_from_the_full_json():
    vocab = ByteVocabulary.from_tokenizer(_unigram_tokenizer())
    assert vocab.family == SENTENCEPIECE and vocab.byte_fallback
    assert vocab.token_bytes(6) == b"A" and vocab.token_bytes(4) == b" ab"


def test_a_piece_outside_the_byte_table_is_named_in_the_error():
    bpe = Tokenizer(models.BPE({"a": 0, "b": 1, "a b": 2}, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    bpe.decoder = decoders.ByteLevel()
    with pytest.raises(UnsupportedTokenizerError, match=r"byte-level token 'a b' holds ' '"):
        ByteVocabulary.from_tokenizer(PreTrainedTokenizerFast(tokenizer_object=bpe))


TRICKY_BYTES = [
    b"", b"a", b"\x00", b"\x7f\x80", b"\xc2", b"\xc2\xa9", b"\xc1\xbf", b"\xc0\x80", b"\xe0\x80", b"\xe0\xa0",
    b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xed\xa0\x80", b"\xef\xbf\xbf", b"\xf0\x8f", b"\xf0\x90\x80\x80",
    b"\xf4\x8f\xbf\xbf", b"\xf4\x90", b"\xf5", b"\xff", b"\x80", b"\xbf abc", "h\u00e9llo😀".encode(),
    "😀".encode()[:3], "😀".encode()[1:], b"ab\xe2\x82", b"ab\xe2\x82\xac\xe2", b"\xe2\x82\xac\x80",
]


def _rows(strings):
    lengths = np.array([len(s) for s in strings], dtype=np.int32)
    width = max(int(lengths.max()), 1)
    matrix = np.zeros((len(strings), width), dtype=np.uint8)
    for row, data in enumerate(strings):
        matrix[row, : len(data)] = list(data)
    return matrix, lengths


def test_vectorised_utf8_check_agrees_with_the_scalar_scanner():
    rng = np.random.default_rng(0)
    pool = [b"a", b" ", b"\x00"] + [bytes([b]) for b in range(0x80, 0x100)]
    randoms = [b"".join(pool[k] for k in rng.integers(0, len(pool), rng.integers(1, 9))) for _ in range(3000)]
    # Mostly-valid strings cut at random places: tails of real characters.
    text = "aé你😀\u0301z".encode()
    cuts = [text[i:j] for i in range(len(text)) for j in range(i + 1, len(text) + 1)]
    strings = TRICKY_BYTES + randoms + cuts
    matrix, lengths = _rows(strings)
    want = np.array([incomplete_tail_start(s) is not None for s in strings])
    got = valid_prefix_rows(matrix, lengths)
    bad = [s for s, g, w in zip(strings, got, want) if g != w]
    assert not bad, bad[:10]
    assert want.sum() > 100 and (~want).sum() > 100  # both outcomes are exercised
