import random
import sys
from functools import lru_cache

import pytest

from chared_flows.decoding.utf8 import incomplete_tail_start, is_valid_prefix, split_complete


@lru_cache(maxsize=1)
def proper_prefixes_of_chars() -> frozenset[bytes]:
    """Every proper prefix of every valid character's UTF-8 encoding (the reference)."""
    out = set()
    for cp in range(0x80, sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        data = chr(cp).encode("utf-8")
        out.update(data[:k] for k in range(1, len(data)))
    return frozenset(out)


def reference_is_valid_prefix(data: bytes) -> bool:
    for k in range(0, 4):
        head, tail = (data, b"") if k == 0 else (data[:-k], data[-k:])
        if k > len(data):
            break
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if not tail or tail in proper_prefixes_of_chars():
            return True
    return False


def test_every_one_and_two_byte_string_matches_reference():
    for a in range(256):
        assert is_valid_prefix(bytes([a])) == reference_is_valid_prefix(bytes([a])), a
        for b in range(256):
            data = bytes([a, b])
            assert is_valid_prefix(data) == reference_is_valid_prefix(data), data


def test_random_longer_strings_match_reference():
    rng = random.Random(1234)
    pieces = [chr(c).encode() for c in (0x41, 0xE9, 0x4F60, 0x1F600, 0x10FFFF, 0xD7FF, 0xE000)]
    for _ in range(20000):
        if rng.random() < 0.5:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(3, 7)))
        else:  # valid text cut anywhere, sometimes with one byte flipped
            data = b"".join(rng.choice(pieces) for _ in range(3))[: rng.randrange(1, 12)]
            if rng.random() < 0.3:
                i = rng.randrange(len(data))
                data = data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]
        assert is_valid_prefix(data) == reference_is_valid_prefix(data), data


@pytest.mark.parametrize(
    "data, tail",
    [(b"", b""), (b"abc", b""), ("é".encode(), b""), ("a😀".encode()[:3], b"\xf0\x9f"), ("你".encode()[:1], b"\xe4")],
)
def test_split_complete(data, tail):
    head, got = split_complete(data)
    assert got == tail and head + got == data


def test_surrogate_start_is_rejected_at_once():
    # Python's incremental decoder accepts this prefix; it can never complete.
    assert incomplete_tail_start(b"\xed\xa0") is None
    with pytest.raises(ValueError, match="not a valid UTF-8 prefix"):
        split_complete(b"a\xff")
