"""UTF-8 prefix validity, checked byte by byte.

Subtle: Python's incremental decoder is not a prefix checker. It accepts
b"\\xed\\xa0" (the start of a surrogate, which can never complete) and only fails
once more bytes arrive. Masking must reject such bytes at once, so the scan
below applies the exact second-byte ranges of RFC 3629.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# lead byte -> (continuation bytes needed, allowed range of the first continuation byte)
_LEADS: dict[int, tuple[int, int, int]] = {}
for _b in range(0xC2, 0xE0):
    _LEADS[_b] = (1, 0x80, 0xBF)
_LEADS[0xE0] = (2, 0xA0, 0xBF)
for _b in list(range(0xE1, 0xED)) + [0xEE, 0xEF]:
    _LEADS[_b] = (2, 0x80, 0xBF)
_LEADS[0xED] = (2, 0x80, 0x9F)
_LEADS[0xF0] = (3, 0x90, 0xBF)
for _b in range(0xF1, 0xF4):
    _LEADS[_b] = (3, 0x80, 0xBF)
_LEADS[0xF4] = (3, 0x80, 0x8F)


def incomplete_tail_start(data: bytes) -> int | None:
    """Where the trailing incomplete character starts (len(data) if none); None if invalid.

    `data` is valid when it is a prefix of some valid UTF-8 string.
    """
    if data.isascii():
        return len(data)
    i, n = 0, len(data)
    while i < n:
        lead = data[i]
        if lead < 0x80:
            i += 1
            continue
        spec = _LEADS.get(lead)
        if spec is None:
            return None
        need, lo, hi = spec
        for j in range(1, need + 1):
            if i + j >= n:
                return i
            c = data[i + j]
            if not (lo <= c <= hi if j == 1 else 0x80 <= c <= 0xBF):
                return None
        i += need + 1
    return n


# The same table as arrays, for the vectorised check: lead byte -> bytes it needs (-1: never a lead).
_NEED = np.full(256, -1, dtype=np.int8)
_NEED[:0x80] = 0
_FIRST_LO = np.full(256, 0x80, dtype=np.uint8)
_FIRST_HI = np.full(256, 0xBF, dtype=np.uint8)
for _b, (_need, _lo, _hi) in _LEADS.items():
    _NEED[_b], _FIRST_LO[_b], _FIRST_HI[_b] = _need, _lo, _hi


def valid_prefix_rows(matrix: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """`is_valid_prefix(row[:length])` for every row of a zero-padded uint8 matrix, column by column.

    Per row the state is how many continuation bytes are still owed and the
    range the next one must fall in (the lead's special first range, then
    0x80..0xBF). A row is invalid once a byte inside its length breaks the
    state; ending mid-character is fine (a prefix). Only rows holding a
    non-ASCII byte run the scan: padding is 0, so an all-ASCII row is valid.
    """
    valid = np.ones(len(matrix), dtype=bool)
    rows = np.flatnonzero((matrix >= 0x80).any(axis=1)) if matrix.size else np.zeros(0, np.int64)
    if not len(rows):
        return valid
    # Longest rows first: the rows still inside their bytes at a depth are then a prefix.
    rows = rows[np.argsort(-lengths[rows], kind="stable")]
    sub = matrix[rows]
    still_inside = np.cumsum(np.bincount(lengths[rows], minlength=sub.shape[1] + 1)[::-1])[::-1]
    ok = np.ones(len(rows), dtype=bool)
    need = np.zeros(len(rows), dtype=np.int8)  # continuation bytes still owed
    lo = np.full(len(rows), 0x80, dtype=np.uint8)  # range of the next continuation byte
    hi = np.full(len(rows), 0xBF, dtype=np.uint8)
    for depth in range(sub.shape[1]):
        k = int(still_inside[depth + 1])  # rows longer than depth
        if k == 0:
            break
        byte, owed = sub[:k, depth], need[:k] > 0
        ok[:k] &= np.where(owed, (lo[:k] <= byte) & (byte <= hi[:k]), _NEED[byte] >= 0)
        lo[:k] = np.where(owed, np.uint8(0x80), _FIRST_LO[byte])
        hi[:k] = np.where(owed, np.uint8(0xBF), _FIRST_HI[byte])
        need[:k] = np.where(owed, need[:k] - 1, _NEED[byte])
    valid[rows] = ok
    return valid


def is_valid_prefix(data: bytes) -> bool:
    return incomplete_tail_start(data) is not None


def split_complete(data: bytes) -> tuple[bytes, bytes]:
    """Split a valid prefix into (complete characters, incomplete tail)."""
    cut = incomplete_tail_start(data)
    if cut is None:
        raise ValueError(f"not a valid UTF-8 prefix: {data[-8:]!r}")
    return data[:cut], data[cut:]


@lru_cache(maxsize=4096)
def next_byte_mask(pending: bytes) -> np.ndarray:
    """Bytes that keep `pending + byte` a valid UTF-8 prefix (pending: the incomplete tail)."""
    return np.fromiter((incomplete_tail_start(pending + bytes([b])) is not None for b in range(256)), bool, 256)


def pending_after(pending: bytes, byte: int) -> bytes:
    """The incomplete tail once `byte` follows `pending` (b"" when a character completes)."""
    data = pending + bytes([byte])
    cut = incomplete_tail_start(data)
    if cut is None:
        raise ValueError(f"byte {byte:#04x} cannot follow {pending!r} in UTF-8")
    return data[cut:]
