"""Token id -> exact bytes, per tokenizer family.

Never derive a token's bytes with `decode([id])`: decoders strip prefixes,
merge byte-fallback pieces and replace invalid UTF-8 with U+FFFD, so one token
alone does not decode to its bytes. Instead we read the vocabulary's surface
strings and undo the family's encoding:

- byte-level BPE (GPT-2, SmolLM2, Qwen, Llama-3): every byte is stored as one
  printable unicode character (GPT-2's `bytes_to_unicode` table);
- SentencePiece-style (Gemma, Llama-2): "▁" stands for a space and
  `<0xNN>` byte-fallback pieces stand for one raw byte.

Added tokens are matched literally by the tokenizer, so their bytes are their
content as written, except that special/control tokens get None: they are not
text and the decoder never emits them as characters.

Speed: this runs once per model, but on Gemma-3's 262,144 rows every
per-token Python step costs about 0.1 s. So the pieces are decoded in bulk
(one joined string through a lookup array, or one comprehension), and the
tokenizer's JSON is never parsed whole (benchmarks/vocab.py; the per-token
reference build in tests/fixtures/reference_vocab.py checks every byte).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from chared_flows.errors import UnsupportedTokenizerError

BYTE_LEVEL = "byte_level"
SENTENCEPIECE = "sentencepiece"
_SPACE_MARK = "\u2581"  # "▁"


@lru_cache(maxsize=1)
def gpt2_unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable stand-in char -> byte."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {chr(b): b for b in printable}
    shift = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shift)] = b
            shift += 1
    return table


def _backend(tokenizer: Any) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedTokenizerError(
            f"{type(tokenizer).__name__} has no fast (Rust) backend; load the tokenizer with "
            "use_fast=True so its vocabulary can be read exactly"
        )
    return backend


def _family_spec(backend: Any) -> dict[str, Any]:
    """The parts of tokenizer.json that detect_family reads: the decoder and the model's byte_fallback.

    Subtle: `backend.to_str()` + `json.loads` serialises and parses the whole
    vocabulary and merge list (2 s for Gemma-3's 262k tokens), so the decoder
    is read alone and the flag from the model object. Only a model that does not
    expose the flag (Unigram) and whose decoder does not settle it falls back to
    the full JSON.
    """
    decoder = backend.decoder
    spec: dict[str, Any] = {
        "decoder": json.loads(decoder.__getstate__()) if decoder is not None else None,
        "model": {"type": type(backend.model).__name__},
    }
    flag = getattr(backend.model, "byte_fallback", None)
    if flag is None:
        kinds = {d.get("type") for d in _decoder_types(spec["decoder"])}
        if not kinds & {"ByteLevel", "ByteFallback"}:
            return json.loads(backend.to_str())
    spec["model"]["byte_fallback"] = bool(flag)
    return spec


def _decoder_types(decoder: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not decoder:
        return []
    if decoder.get("type") == "Sequence":
        return [d for sub in decoder.get("decoders", []) for d in _decoder_types(sub)]
    return [decoder]


def detect_family(spec: dict[str, Any]) -> tuple[str, bool]:
    """(family, byte_fallback) from a tokenizer.json dict; refuse anything else."""
    decoders = _decoder_types(spec.get("decoder"))
    kinds = {d.get("type") for d in decoders}
    model = spec.get("model") or {}
    if "ByteLevel" in kinds:
        return BYTE_LEVEL, False
    space_replaced = "Metaspace" in kinds or any(
        d.get("type") == "Replace" and (d.get("pattern") or {}).get("String") == _SPACE_MARK
        for d in decoders
    )
    if space_replaced:
        return SENTENCEPIECE, bool(model.get("byte_fallback")) or "ByteFallback" in kinds
    raise UnsupportedTokenizerError(
        f"tokenizer family not recognised (model {model.get('type')!r}, decoders {sorted(k for k in kinds if k)}); "
        "supported: byte-level BPE (ByteLevel decoder) and SentencePiece-style (▁ and <0xNN> byte fallback). "
        "Token bytes are not guessed for other families"
    )


def _byte_level_bytes(pieces: list[str]) -> list[bytes]:
    """Byte-level pieces -> bytes, all at once: one char is one byte, mapped through a lookup array."""
    table = gpt2_unicode_to_byte()
    lut = np.full(max(map(ord, table)) + 1, -1, dtype=np.int16)
    for ch, byte in table.items():
        lut[ord(ch)] = byte
    joined = "".join(pieces)
    codes = np.frombuffer(joined.encode("utf-32-le"), dtype="<u4")
    mapped = lut[np.minimum(codes, len(lut) - 1)]
    bad = (codes >= len(lut)) | (mapped < 0)
    if bad.any():
        _raise_not_byte_level(pieces, table)
    return _split(mapped.astype(np.uint8).tobytes(), pieces)


def _raise_not_byte_level(pieces: list[str], table: dict[str, int]) -> None:
    for piece in pieces:
        for ch in piece:
            if ch not in table:
                raise UnsupportedTokenizerError(
                    f"byte-level token {piece!r} holds {ch!r}, which is not in the GPT-2 byte table; "
                    "this tokenizer is not plain byte-level BPE"
                )


def _split(data: bytes, pieces: list[str]) -> list[bytes]:
    """Cut `data` into consecutive runs of len(piece) bytes, one per piece."""
    ends = np.cumsum(np.fromiter(map(len, pieces), np.int64, len(pieces))).tolist()
    starts = [0] + ends[:-1]
    return [data[a:b] for a, b in zip(starts, ends)]


@lru_cache(maxsize=1)
def _fallback_pieces() -> dict[str, bytes]:
    """Every spelling "<0xNN>" of a byte-fallback piece (hex digits in either case) -> its byte."""
    out = {}
    for byte in range(256):
        hi, lo = f"{byte:02x}"
        for h in {hi, hi.upper()}:
            for lw in {lo, lo.upper()}:
                out[f"<0x{h}{lw}>"] = bytes([byte])
    return out


def _sentencepiece_bytes(pieces: list[str], byte_fallback: bool) -> list[bytes]:
    """"▁" -> space, UTF-8; with byte fallback, a whole piece "<0xNN>" is that one raw byte."""
    out = [p.replace(_SPACE_MARK, " ").encode("utf-8") for p in pieces]
    if byte_fallback:
        table = _fallback_pieces()
        hits = np.fromiter(map(table.__contains__, pieces), bool, len(pieces))
        for token_id in np.flatnonzero(hits).tolist():
            out[token_id] = table[pieces[token_id]]
    return out


@dataclass(frozen=True)
class ByteVocabulary:
    """The exact bytes of every row of a model's output layer (None: not text)."""

    family: str
    byte_fallback: bool
    tokens: tuple[bytes | None, ...]
    eos_token_ids: tuple[int, ...] = ()
    _single_byte_ids: dict[int, int] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        *,
        num_rows: int | None = None,
        eos_token_ids: Sequence[int] | None = None,
    ) -> "ByteVocabulary":
        """Read a HF fast tokenizer. `num_rows`: the model's logits width (padded rows -> None)."""
        backend = _backend(tokenizer)
        family, byte_fallback = detect_family(_family_spec(backend))
        size = len(tokenizer)
        rows = size if num_rows is None else num_rows
        # Same as convert_ids_to_tokens, without its per-id Python loop.
        pieces = list(map(backend.id_to_token, range(min(size, rows))))
        fixed = _literal_tokens(tokenizer, family, len(pieces))
        fixed.update((i, None) for i, piece in enumerate(pieces) if piece is None)  # holes in the id range
        # Subtle: added/special tokens and holes are blanked before the family's
        # decoding, which would reject (byte-level) or misread their literal text.
        plain = list(pieces)
        for token_id in fixed:
            plain[token_id] = ""
        if family == BYTE_LEVEL:
            raw = _byte_level_bytes(plain)
        else:
            raw = _sentencepiece_bytes(plain, byte_fallback)
        for token_id, data in fixed.items():
            raw[token_id] = data or b""
        raw.extend([b""] * (rows - len(raw)))  # padded rows beyond the tokenizer
        # An empty token would end a round without adding a byte: never a candidate.
        tokens = tuple(data or None for data in raw)
        eos = tuple(sorted({int(i) for i in (eos_token_ids or []) if 0 <= int(i) < rows}))
        return cls(family, byte_fallback, tokens, eos, _first_single_byte_ids(raw))

    def __len__(self) -> int:
        return len(self.tokens)

    def token_bytes(self, token_id: int) -> bytes | None:
        if not 0 <= token_id < len(self.tokens):
            raise IndexError(f"token id {token_id} outside 0..{len(self.tokens) - 1}")
        return self.tokens[token_id]

    def single_byte_token(self, byte: int) -> int | None:
        """A token that is exactly this one byte (byte-level char or <0xNN>), if any."""
        return self._single_byte_ids.get(byte)


def _literal_tokens(tokenizer: Any, family: str, count: int) -> dict[int, bytes | None]:
    """Bytes of the added and special tokens among the first `count` ids (None: not text)."""
    out: dict[int, bytes | None] = {}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    for token_id, token in added.items():
        if not 0 <= token_id < count:
            continue
        if token.special:
            out[token_id] = None
            continue
        # Subtle: added tokens are matched in raw text, so their content is
        # literal (not byte-table encoded), except "▁" in normalized SP tokens.
        content = token.content
        if family == SENTENCEPIECE and getattr(token, "normalized", False):
            content = content.replace(_SPACE_MARK, " ")
        out[token_id] = content.encode("utf-8")
    for token_id in getattr(tokenizer, "all_special_ids", []) or []:
        if 0 <= token_id < count:
            out[token_id] = None
    return out


def _first_single_byte_ids(raw: list[bytes]) -> dict[int, int]:
    """byte -> the lowest id whose bytes are exactly that byte (raw: b"" for non-text rows)."""
    out: dict[int, int] = {}
    lengths = np.fromiter(map(len, raw), np.int64, len(raw))
    for token_id in np.flatnonzero(lengths == 1).tolist():
        out.setdefault(raw[token_id][0], token_id)
    return out
