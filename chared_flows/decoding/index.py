"""Prefix index over a vocabulary's byte strings: next-byte marginals without a vocabulary loop.

Sort every text token's bytes once. The tokens that start with a prefix `s`
are then one contiguous range of the sorted order, and inside that range they
are ordered by their byte at depth len(s), with the tokens *equal* to `s`
first (a shorter string sorts before its extensions). So one `searchsorted`
on the depth column splits the range into END + 256 byte sub-ranges, and one
`np.add.reduceat` sums each sub-range's probability mass.

Subtle: the masses are summed per segment (reduceat), not taken as
differences of one cumulative sum, so a tiny segment next to a huge one keeps
its full relative precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from chared_flows.decoding.utf8 import incomplete_tail_start, valid_prefix_rows
from chared_flows.decoding.vocab import ByteVocabulary

END = 256  # option index: the token ends exactly here (the paper's "null string")
EOS = 257  # option index: the text ends (only at the start of a round)
NUM_OPTIONS = 258
_KEYS = np.arange(-1, 257, dtype=np.int16)  # -1 = "token ends at this depth", then bytes 0..255


@dataclass
class Split:
    """One marginal step: masses of END and of each next byte, and where each byte's range lies."""

    masses: np.ndarray  # shape (257,): [byte 0..255, END] in option order
    starts: np.ndarray  # shape (257,): absolute start of each option's range (END first internally)
    ends: np.ndarray

    def byte_range(self, byte: int) -> tuple[int, int]:
        return int(self.starts[byte]), int(self.ends[byte])


class PrefixIndex:
    """Sorted byte strings of one vocabulary, with per-depth byte columns."""

    def __init__(self, vocab: ByteVocabulary):
        # Subtle: built once per model, but on a 262k vocabulary every per-token
        # Python step costs ~0.1 s: keep to one sort and a few C-level passes
        # (the reference build, tests/fixtures/reference_vocab.py, checks the arrays).
        text_ids = [i for i, data in enumerate(vocab.tokens) if data]
        text_ids.sort(key=vocab.tokens.__getitem__)
        self.vocab = vocab
        self.sorted_ids = np.asarray(text_ids, dtype=np.int64)
        self.sorted_bytes: list[bytes] = list(map(vocab.tokens.__getitem__, text_ids))  # type: ignore[arg-type]
        self.lengths = np.fromiter(map(len, self.sorted_bytes), np.int32, len(text_ids))
        self.max_len = int(self.lengths.max()) if len(text_ids) else 0
        self._matrix = _byte_matrix(self.sorted_bytes, self.lengths, self.max_len)
        self._first_keys = self._matrix[:, 0].astype(np.int16) if len(text_ids) else np.zeros(0, np.int16)
        self.valid_at_boundary = valid_prefix_rows(self._matrix, self.lengths)
        self._tail_masks: dict[bytes, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.sorted_ids)

    def sort_probs(self, probs: np.ndarray) -> np.ndarray:
        """Token probabilities (by id) -> float64 probabilities in sorted order."""
        return np.asarray(probs, dtype=np.float64)[self.sorted_ids]

    def validity_mask(self, pending: bytes) -> np.ndarray:
        """Tokens whose bytes keep `pending + token` a valid UTF-8 prefix (sorted order)."""
        if not pending:
            return self.valid_at_boundary
        mask = self._tail_masks.get(pending)
        if mask is None:
            mask = np.zeros(len(self), dtype=bool)
            # Only tokens starting with a continuation byte can follow an incomplete character.
            lo, hi = self.byte_range_of_first(0x80, 0xBF)
            for k in range(lo, hi):
                mask[k] = incomplete_tail_start(pending + self.sorted_bytes[k]) is not None
            self._tail_masks[pending] = mask
        return mask

    def byte_range_of_first(self, first: int, last: int) -> tuple[int, int]:
        lo = int(np.searchsorted(self._first_keys, first, side="left"))
        hi = int(np.searchsorted(self._first_keys, last, side="right"))
        return lo, hi

    def prefix_range(self, prefix: bytes) -> tuple[int, int]:
        """Range of sorted tokens that start with `prefix` (by binary search)."""
        lo, hi = 0, len(self)
        for depth, byte in enumerate(prefix):
            keys = self._keys(lo, hi, depth)
            lo, hi = lo + int(np.searchsorted(keys, byte, "left")), lo + int(np.searchsorted(keys, byte, "right"))
        return lo, hi

    def prefix_ranges(self, text: bytes, lo: int, hi: int, depth: int) -> Iterator[tuple[int, int, int, int]]:
        """Walk `text` down from [lo, hi) (the tokens starting with text[:depth]), one byte at a time.

        Yields (n, lo, hi, end) for n = depth + 1, ...: the tokens in [lo, hi) start with
        text[:n], and those in [lo, end) equal it (a shorter string sorts first). Stops
        where no token starts with text[:n].
        """
        for n in range(depth, min(len(text), self.max_len)):
            keys = self._keys(lo, hi, n)
            lo, hi = lo + int(np.searchsorted(keys, text[n], "left")), lo + int(np.searchsorted(keys, text[n], "right"))
            if lo >= hi:
                return
            yield n + 1, lo, hi, lo + int(np.searchsorted(self._keys(lo, hi, n + 1), -1, "right"))

    def split(self, sorted_probs: np.ndarray, lo: int, hi: int, depth: int) -> Split:
        """Marginal step: tokens in [lo, hi) share a prefix of `depth` bytes; split them by the next byte."""
        keys = self._keys(lo, hi, depth)
        # 258 edges tile [0, hi-lo) into 257 segments: END (key -1), then bytes 0..255.
        edges = np.searchsorted(keys, _KEYS).astype(np.int64)
        seg_start, seg_end = edges[:-1], edges[1:]
        masses = _segment_sums(sorted_probs[lo:hi], seg_start, seg_end)
        # Reorder from [END, b0..b255] to option order [b0..b255, END].
        order = np.r_[1:257, 0]
        return Split(masses[order], lo + seg_start[order], lo + seg_end[order])

    def _keys(self, lo: int, hi: int, depth: int) -> np.ndarray:
        if depth == 0:
            return self._first_keys[lo:hi]
        if depth >= self.max_len:
            return np.full(hi - lo, -1, dtype=np.int16)
        col = self._matrix[lo:hi, depth].astype(np.int16)
        col[self.lengths[lo:hi] <= depth] = -1
        return col


def _byte_matrix(strings: list[bytes], lengths: np.ndarray, width: int) -> np.ndarray:
    """Row k = strings[k] padded with zeros to `width` bytes (uint8), scattered from one joined buffer."""
    if not strings:
        return np.zeros((0, 1), np.uint8)
    data = np.frombuffer(b"".join(strings), dtype=np.uint8)
    starts = np.cumsum(lengths, dtype=np.int64) - lengths
    rows = np.repeat(np.arange(len(strings)), lengths)
    cols = np.arange(len(data)) - np.repeat(starts, lengths)
    matrix = np.zeros((len(strings), width), dtype=np.uint8)
    matrix[rows, cols] = data
    return matrix


def _segment_sums(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Sum values[starts[i]:ends[i]] for each i (segments tile the array in order)."""
    out = np.zeros(len(starts), dtype=np.float64)
    nonempty = ends > starts
    if nonempty.any():
        # Subtle: reduceat sums from each start to the *next listed* start, so
        # empty segments must be dropped first (they would repeat a start).
        out[nonempty] = np.add.reduceat(values, starts[nonempty])
    return out
