"""The text one decoding writes: bytes in, characters out, stop strings and the length limit."""

from __future__ import annotations

import codecs
from typing import Iterator, Sequence


class Output:
    """Bytes written so far, the characters they decode to, and why the text ended (`finish`).

    `forced` bytes (token healing) are written again by the first round(s) but belong to
    the prompt: they are kept in `out` and left out of `text`.
    """

    def __init__(self, stop: Sequence[str], max_new_chars: int, forced: bytes = b""):
        self.stop = list(stop)
        self.max_new_chars = max_new_chars
        self.forced = forced
        self.out = bytearray()
        self.text = ""
        self.chars = 0
        self.finish: str | None = None
        self._utf8 = codecs.getincrementaldecoder("utf-8")()

    def emit_all(self, data: bytes) -> Iterator[str]:
        for byte in data:
            yield from self.emit(byte)
            if self.finish is not None:
                return

    def emit(self, byte: int) -> Iterator[str]:
        self.out.append(byte)
        decoded = self._utf8.decode(bytes([byte]))
        if len(self.out) <= len(self.forced):
            return  # healed prompt bytes: written again, but they are prompt, not output
        for ch in decoded:
            self.text += ch
            self.chars += 1
            # Check before yielding: a stream reads self.text when we yield.
            matched = next((s for s in self.stop if self.text.endswith(s)), None)
            if matched is not None:
                self.text = self.text[: -len(matched)]
                self.end("stop")
            elif self.chars >= self.max_new_chars:
                self.end("length")
            yield ch

    def end(self, reason: str) -> None:
        """The first reason given is the one that counts."""
        if self.finish is None:
            self.finish = reason

    def safe_length(self) -> int:
        """How much of `text` a stream may send: all but a tail that may still start a stop string."""
        return len(self.text) - held_back(self.text, self.stop)


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
