import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from chared_flows.decoding.vocab import (
    BYTE_LEVEL,
    SENTENCEPIECE,
    ByteVocabulary,
    gpt2_unicode_to_byte,
)
from chared_flows.errors import UnsupportedTokenizerError
from tests.fixtures.tiny import byte_fallback_tokenizer, byte_level_tokenizer

TRICKY = [
    "",
    " ",
    "   leading and trailing   ",
    "\t\ttabs\tand\nnewlines\n\n",
    "emoji 😀🎉👍 in a row",
    "CJK 你好，世界 and 日本語",
    "combining e\u0301 a\u0308 and n\u0303",
    "mixed: Café 42 + 你 = 😀?",
    "   \t  \n",
]
TOKENIZERS = {"byte_level": byte_level_tokenizer, "byte_fallback": byte_fallback_tokenizer}


@pytest.fixture(params=sorted(TOKENIZERS))
def tokenizer(request):
    return TOKENIZERS[request.param]()


def test_gpt2_table_is_a_bijection_onto_bytes():
    table = gpt2_unicode_to_byte()
    assert sorted(table.values()) == list(range(256))
    assert table["Ġ"] == ord(" ") and table["Ċ"] == ord("\n") and table["A"] == ord("A")


def test_families_are_detected():
    assert ByteVocabulary.from_tokenizer(byte_level_tokenizer()).family == BYTE_LEVEL
    vocab = ByteVocabulary.from_tokenizer(byte_fallback_tokenizer())
    assert vocab.family == SENTENCEPIECE and vocab.byte_fallback


@pytest.mark.parametrize("text", TRICKY)
def test_token_bytes_round_trip_tricky_strings(tokenizer, text):
    vocab = ByteVocabulary.from_tokenizer(tokenizer)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert b"".join(vocab.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_byte_fallback_pieces_are_single_raw_bytes():
    tok = byte_fallback_tokenizer()
    vocab = ByteVocabulary.from_tokenizer(tok)
    for b in (0x00, 0x41, 0x9F, 0xF0, 0xFF):
        token_id = tok.convert_tokens_to_ids(f"<0x{b:02X}>")
        assert vocab.token_bytes(token_id) == bytes([b])
    assert vocab.single_byte_token(0xF0) == tok.convert_tokens_to_ids("<0xF0>")


def test_space_mark_becomes_a_space():
    tok = byte_fallback_tokenizer()
    vocab = ByteVocabulary.from_tokenizer(tok)
    pieces = [p for p in tok.get_vocab() if p.startswith("\u2581") and len(p) > 1]
    assert pieces, "the tiny tokenizer should have learned ▁-prefixed pieces"
    for piece in pieces:
        assert vocab.token_bytes(tok.convert_tokens_to_ids(piece)) == piece.replace("\u2581", " ").encode()


def test_valid_utf8_tokens_agree_with_the_tokenizer_decoder(tokenizer):
    vocab = ByteVocabulary.from_tokenizer(tokenizer)
    checked = 0
    for token_id, data in enumerate(vocab.tokens):
        if data is None:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        assert tokenizer.decode([token_id]) == text, (token_id, data)
        checked += 1
    assert checked > 200


def test_special_tokens_have_no_bytes_and_padded_rows_are_empty(tokenizer):
    vocab = ByteVocabulary.from_tokenizer(tokenizer, num_rows=len(tokenizer) + 5, eos_token_ids=[tokenizer.eos_token_id])
    assert len(vocab) == len(tokenizer) + 5
    for token_id in tokenizer.all_special_ids:
        assert vocab.token_bytes(token_id) is None
    assert all(vocab.token_bytes(i) is None for i in range(len(tokenizer), len(vocab)))
    assert vocab.eos_token_ids == (tokenizer.eos_token_id,)
    with pytest.raises(IndexError, match="outside"):
        vocab.token_bytes(len(vocab))


def test_fewer_rows_than_tokenizer_drops_the_extra_tokens(tokenizer):
    vocab = ByteVocabulary.from_tokenizer(tokenizer, num_rows=50)
    assert len(vocab) == 50


def test_non_special_added_tokens_are_literal_text():
    tok = byte_level_tokenizer()
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.backend_tokenizer.to_str()))
    tok.add_tokens(["<table> é"])
    vocab = ByteVocabulary.from_tokenizer(tok)
    assert vocab.token_bytes(tok.convert_tokens_to_ids("<table> é")) == "<table> é".encode()


def test_unknown_family_is_refused_with_a_clear_error():
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    wordpiece.decoder = decoders.WordPiece()
    tok = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]")
    with pytest.raises(UnsupportedTokenizerError, match="not recognised.*WordPiece"):
        ByteVocabulary.from_tokenizer(tok)


def test_slow_tokenizer_is_refused():
    class Slow:
        pass

    with pytest.raises(UnsupportedTokenizerError, match="use_fast=True"):
        ByteVocabulary.from_tokenizer(Slow())
