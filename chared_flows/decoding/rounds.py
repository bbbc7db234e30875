"""A round's byte tree, one member's view (`MemberRound`) and the ensemble's (`EnsembleRound`).

Both are *byte sources*: `distribution()` gives the next option's probabilities
(bytes 0..255, END = the round's token ends here, EOS = the text ends) and
`advance(byte)` returns the source one byte further. Sources are persistent: the
old one stays valid, so a search can fork at every node; children are memoised.

A member's view is a set of weighted *cursors*. A cursor reads one next-token
distribution (a forward pass, in sorted index order) and holds the range of tokens
that start with the bytes read so far (`depth` of them). In chared mode a round
has one cursor per member (the pass on the canonical context, depth 0). In exact
mode's lookahead (exact.py) a member has one cursor per beam path, weighted by the
path's probability and starting inside its current token: the round then asks
"how does the current token end?", summed over tokenizations.

Conventions, shared by generation and scoring:
- END is never possible at the round's start (a unit holds at least one byte) and
  EOS only there, and only at a character boundary;
- bytes that cannot continue valid UTF-8 get no mass (`next_byte_mask`);
- a member with no mass left abstains (None) for the rest of the round;
- `forced` bytes (token healing) must be written first: only the next forced byte
  is an option (and END, once the round holds a byte); if the members give it no
  mass it is written anyway (the prompt says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from chared_flows.decoding.index import END, EOS, NUM_OPTIONS, PrefixIndex
from chared_flows.decoding.utf8 import next_byte_mask, pending_after

Rule = Callable[[Sequence["np.ndarray | None"], np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Cursor:
    weight: float  # relative weight (exact lookahead: P(path) / P(best path)); 1 in chared mode
    probs: np.ndarray  # next-token probabilities of the pass it reads, sorted index order
    eos: float  # EOS mass, counted only at the round's start
    lo: int  # tokens in [lo, hi) start with the bytes read so far
    hi: int
    depth: int  # how many bytes of the token are read


class MemberRound:
    """One member's next-option distribution inside a round."""

    __slots__ = ("index", "cursors", "at_start", "_dist", "_splits")

    def __init__(self, index: PrefixIndex, cursors: Sequence[Cursor], at_start: bool = True):
        self.index = index
        self.cursors = tuple(cursors)
        self.at_start = at_start
        self._dist: np.ndarray | None = None
        self._splits: list | None = None

    @classmethod
    def opening(cls, index: PrefixIndex, sorted_probs: np.ndarray, eos: float) -> "MemberRound":
        return cls(index, [Cursor(1.0, sorted_probs, eos, 0, len(index), 0)])

    def distribution(self, pending: bytes) -> np.ndarray | None:
        """Normalised over the options; None when this member has no mass left (it abstains)."""
        if self._splits is None:
            self._splits = [self.index.split(c.probs, c.lo, c.hi, c.depth) for c in self.cursors]
            out = np.zeros(NUM_OPTIONS)
            for cursor, split in zip(self.cursors, self._splits):
                out[: END + 1] += cursor.weight * split.masses
                if self.at_start:
                    out[EOS] += cursor.weight * cursor.eos
            out[:END] *= next_byte_mask(pending)
            if self.at_start:
                out[END] = 0.0  # the token equal to "" does not exist; a mid-token path's end was spawned already
            if pending:
                out[EOS] = 0.0
            total = out.sum()
            self._dist = out / total if total > 0 else None
        return self._dist

    def ending_token(self, alone: bool = False) -> int | None:
        """The member's token that ends the round here, if this member would end it here itself.

        That is: its most probable token equal to the bytes read so far, when END is at
        least as probable for this member as any single next byte (or the member is
        `alone` in the ensemble, where the round's END is its own choice). Subtle: any
        token has *some* probability under a softmax, so "a token equal to the round's
        bytes exists" alone would have a member adopt splits it would never write
        (P(END) = 1e-22) whenever another member cut the round there.
        """
        if self._splits is None or len(self.cursors) != 1 or self._dist is None:
            return None
        if not alone and self._dist[END] < self._dist[:END].max():
            return None
        cursor, split = self.cursors[0], self._splits[0]
        lo, hi = int(split.starts[END]), int(split.ends[END])
        if hi <= lo or not cursor.probs[lo:hi].max() > 0:
            return None
        return int(self.index.sorted_ids[lo + int(np.argmax(cursor.probs[lo:hi]))])

    def advance(self, byte: int, pending: bytes) -> "MemberRound | None":
        """The member one byte further (None: no token of it continues, it abstains)."""
        self.distribution(pending)
        cursors = []
        for cursor, split in zip(self.cursors, self._splits):
            if split.masses[byte] > 0:
                lo, hi = split.byte_range(byte)
                cursors.append(Cursor(cursor.weight, cursor.probs, cursor.eos, lo, hi, cursor.depth + 1))
        return MemberRound(self.index, cursors, at_start=False) if cursors else None


class EnsembleRound:
    """The members' views combined by the ensemble's rule: one byte source."""

    __slots__ = ("members", "rule", "weights", "pending", "forced", "added", "origin", "_dist", "_children")

    def __init__(
        self,
        members: Sequence[MemberRound | None],
        rule: Rule,
        weights: np.ndarray,
        pending: bytes = b"",
        forced: bytes = b"",
        added: int = 0,
        origin: bytes = b"",
    ):
        self.members = tuple(members)
        self.rule = rule
        self.weights = weights
        self.pending = pending  # the text's incomplete last character, as bytes
        self.forced = forced  # healed prompt bytes still to write
        self.added = added  # bytes this round has written so far
        self.origin = origin  # the generated bytes before this round (the decoder's bookkeeping)
        self._dist: np.ndarray | None | bool = False  # False: not computed yet
        self._children: dict[int, EnsembleRound] = {}

    @property
    def at_start(self) -> bool:
        return self.added == 0

    def member_distributions(self) -> list[np.ndarray | None]:
        return [None if m is None else m.distribution(self.pending) for m in self.members]

    def distribution(self) -> np.ndarray | None:
        """Normalised over the options; None at a dead end (no member can continue)."""
        if self._dist is False:
            combined = self.rule(self.member_distributions(), self.weights)
            if self.forced:
                combined = _force(combined, self.forced[0], allow_end=not self.at_start)
            total = combined.sum() if combined.size else 0.0
            if not total > 0 and not self.at_start:
                # Only a forced byte no member could write leads here: close the round, the
                # next one re-reads the text (a dead end at a round's start ends the text).
                combined, total = np.zeros(NUM_OPTIONS), 1.0
                combined[END] = 1.0
            self._dist = combined / total if total > 0 else None
        return self._dist

    def advance(self, byte: int) -> "EnsembleRound":
        child = self._children.get(byte)
        if child is None:
            pending = self.pending
            members = [None if m is None else m.advance(byte, pending) for m in self.members]
            child = EnsembleRound(
                members, self.rule, self.weights, pending_after(pending, byte),
                self.forced[1:], self.added + 1, self.origin,
            )
            self._children[byte] = child
        return child


def _force(combined: np.ndarray, byte: int, allow_end: bool) -> np.ndarray:
    out = np.zeros(NUM_OPTIONS)
    if combined.size:
        out[byte] = combined[byte]
        if allow_end:
            out[END] = combined[END]
    if not out.sum() > 0:
        out[byte] = 1.0
    return out


def log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf
