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
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

from chared_flows.errors import UnsupportedTokenizerError

BYTE_LEVEL = "byte_level"
SENTENCEPIECE = "sentencepiece"
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
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


def _backend_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedTokenizerError(
            f"{type(tokenizer).__name__} has no fast (Rust) backend; load the tokenizer with "
            "use_fast=True so its vocabulary can be read exactly"
        )
    return json.loads(backend.to_str())


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


def _piece_bytes(piece: str, family: str, byte_fallback: bool) -> bytes:
    if family == BYTE_LEVEL:
        table = gpt2_unicode_to_byte()
        try:
            return bytes(table[ch] for ch in piece)
        except KeyError as exc:
            raise UnsupportedTokenizerError(
                f"byte-level token {piece!r} holds {exc.args[0]!r}, which is not in the GPT-2 byte table; "
                "this tokenizer is not plain byte-level BPE"
            ) from None
    match = _BYTE_PIECE.match(piece) if byte_fallback else None
    if match:
        return bytes([int(match.group(1), 16)])
    return piece.replace(_SPACE_MARK, " ").encode("utf-8")


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
        spec = _backend_json(tokenizer)
        family, byte_fallback = detect_family(spec)
        size = len(tokenizer)
        rows = size if num_rows is None else num_rows
        pieces = tokenizer.convert_ids_to_tokens(list(range(min(size, rows))))
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        tokens: list[bytes | None] = []
        for token_id, piece in enumerate(pieces):
            tokens.append(_token_bytes(token_id, piece, added, special_ids, family, byte_fallback))
        tokens.extend([None] * (rows - len(tokens)))  # padded rows beyond the tokenizer
        eos = tuple(sorted({int(i) for i in (eos_token_ids or []) if 0 <= int(i) < rows}))
        return cls(family, byte_fallback, tuple(tokens), eos, _first_single_byte_ids(tokens))

    def __len__(self) -> int:
        return len(self.tokens)

    def token_bytes(self, token_id: int) -> bytes | None:
        if not 0 <= token_id < len(self.tokens):
            raise IndexError(f"token id {token_id} outside 0..{len(self.tokens) - 1}")
        return self.tokens[token_id]

    def single_byte_token(self, byte: int) -> int | None:
        """A token that is exactly this one byte (byte-level char or <0xNN>), if any."""
        return self._single_byte_ids.get(byte)


def _token_bytes(
    token_id: int,
    piece: str | None,
    added: dict[int, Any],
    special_ids: set[int],
    family: str,
    byte_fallback: bool,
) -> bytes | None:
    if piece is None or token_id in special_ids:
        return None
    added_token = added.get(token_id)
    if added_token is not None:
        if added_token.special:
            return None
        # Subtle: added tokens are matched in raw text, so their content is
        # literal (not byte-table encoded), except "▁" in normalized SP tokens.
        content = added_token.content
        if family == SENTENCEPIECE and getattr(added_token, "normalized", False):
            content = content.replace(_SPACE_MARK, " ")
        data = content.encode("utf-8")
    else:
        data = _piece_bytes(piece, family, byte_fallback)
    # An empty token would end a round without adding a byte: never a candidate.
    return data or None


def _first_single_byte_ids(tokens: Sequence[bytes | None]) -> dict[int, int]:
    out: dict[int, int] = {}
    for token_id, data in enumerate(tokens):
        if data is not None and len(data) == 1 and data[0] not in out:
            out[data[0]] = token_id
    return out
