"""Choosing what to write next from a byte source: greedy over whole units, sampling, top-p.

A source (rounds.EnsembleRound, exact.ExactSource) answers `distribution()` over
the options (bytes, END, EOS) and `advance(byte)`, and has `pending` (the text's
incomplete last character).

- Greedy never picks a single byte. It picks the most probable *unit*: a byte
  string followed by END or EOS. In chared mode that is the round's most probable
  complete string, which for one member at weight 1 is that member's most probable
  token, so greedy reproduces the member's own greedy text. An argmax over bytes
  lets a lead byte that gathers the mass of many rare characters win (an ensemble
  wrote U+1FAEF where each member wrote plain text), and an argmax over single
  characters is myopic (after a newline a space gathers the mass of every
  indentation token, so it writes runs of spaces where token greedy writes code).
- Sampling (temperature > 0) draws one option at a time: by the chain rule that is
  exact. With top_p < 1 the draw is over whole characters (plus END and EOS): the
  smallest set of characters holding top_p of the mass, found best-first.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from chared_flows.decoding.index import END, EOS
from chared_flows.decoding.rounds import log
from chared_flows.decoding.utf8 import pending_after

DEFAULT_MAX_EXPANSIONS = 20_000  # nodes a search may open before it settles (see SearchStats.capped)


class Source(Protocol):
    pending: bytes

    def distribution(self) -> np.ndarray | None: ...

    def advance(self, byte: int) -> "Source": ...


@dataclass
class Unit:
    """What to write: `data`, then `terminal` (END, EOS, or None: the round goes on)."""

    data: bytes
    terminal: int | None
    source: Any  # the source after `data`
    logp: float


@dataclass
class SearchStats:
    searches: int = 0
    expansions: int = 0
    capped: int = 0  # searches that hit the expansion cap and returned their best so far


Extend = Callable[[Any, bytes], Any]


def whole_characters(node: Any, data: bytes) -> bool:
    """A unit may end here if it ends on a character boundary (the decoder's rule in both modes)."""
    return not node.pending


def best_unit(
    root: Source,
    stats: SearchStats | None = None,
    max_expansions: int = DEFAULT_MAX_EXPANSIONS,
    extend: Extend | None = None,
    may_end: Callable[[Any, bytes], bool] = whole_characters,
) -> Unit | None:
    """The most probable unit ending in END or EOS; None when nothing can be written.

    Best-first (uniform-cost) search down the byte tree: every option's probability is
    at most 1, so a node's log-probability only falls as its string grows, and the
    first terminal taken off the queue is the argmax, proved. Children that cannot
    beat the best terminal already queued are never queued.

    A unit is whole characters: a token may end inside a character (SmolLM2 writes
    an emoji as two tokens), so an END taken off the queue in the middle of one is
    not final: `extend(node, data)` opens the next round there (a forward pass per
    member, only for a candidate that is the best so far) and the search goes on
    through it. Without `extend`, such an END is a unit of its own.
    """
    stats = stats or SearchStats()
    stats.searches += 1
    order = itertools.count()
    heap: list = [(-0.0, next(order), root, b"", None)]
    best: tuple[float, bytes, Any, int] | None = None  # the best terminal queued so far
    expansions = 0
    while heap:
        neg, _, parent, data, option = heapq.heappop(heap)
        if option == END and extend is not None and not may_end(parent, data):
            following = extend(parent, data)  # e.g. mid-character: the unit goes on in the next round
            if following is not None:
                heapq.heappush(heap, (neg, next(order), following, data, None))
            continue
        if option in (END, EOS):
            stats.expansions += expansions
            return Unit(data, option, parent, -neg)
        node = parent if option is None else parent.advance(option)
        data = data if option is None else data + bytes([option])
        if expansions >= max_expansions:
            stats.capped += 1
            break
        expansions += 1
        dist = node.distribution()
        if dist is None:
            continue
        logp = -neg
        for terminal in (END, EOS):
            if dist[terminal] > 0:
                lt = logp + log(dist[terminal])
                heapq.heappush(heap, (-lt, next(order), node, data, terminal))
                final = terminal == EOS or extend is None or may_end(node, data)
                if final and (best is None or lt > best[0]):  # subtle: an END mid-character may fall later
                    best = (lt, data, node, terminal)
        floor = best[0] if best is not None else -np.inf
        for byte in np.flatnonzero(dist[:END] > 0):
            lb = logp + log(dist[byte])
            if lb > floor:
                heapq.heappush(heap, (-lb, next(order), node, data, int(byte)))
    stats.expansions += expansions
    if best is None:  # capped before any unit could end on a whole character: take any terminal
        best = max(((-n, d, p, o) for n, _, p, d, o in heap if o in (END, EOS)), default=None, key=lambda t: t[0])
    if best is None:
        return None
    return Unit(best[1], best[3], best[2], best[0])


def draw(dist: np.ndarray, rng: np.random.Generator) -> int:
    # searchsorted on the cumulative sum: microseconds, unlike torch.multinomial.
    cdf = np.cumsum(dist)
    pick = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(pick, len(dist) - 1)


def sample_unit(
    root: Source,
    top_p: float,
    rng: np.random.Generator,
    stats: SearchStats | None = None,
    max_expansions: int = DEFAULT_MAX_EXPANSIONS,
) -> Unit | None:
    """One sampled step: a byte (top_p = 1) or a whole character from the nucleus; or END/EOS."""
    if top_p < 1.0:
        return _nucleus_unit(root, top_p, rng, stats or SearchStats(), max_expansions)
    dist = root.distribution()
    if dist is None:
        return None
    option = draw(dist, rng)
    if option in (END, EOS):
        return Unit(b"", option, root, log(dist[option]))
    return Unit(bytes([option]), None, root.advance(option), log(dist[option]))


@dataclass
class Candidate:
    """One unit of the nucleus: `data`, then END/EOS or None; `whole` False for a cut-off partial character."""

    logp: float
    parent: Any  # the source before the last byte (or the unit's own source for END/EOS)
    data: bytes
    option: int | None  # the last byte (None: data is complete at parent), END or EOS
    whole: bool


def nucleus(root: Source, top_p: float, stats: SearchStats | None = None,
            max_expansions: int = DEFAULT_MAX_EXPANSIONS) -> list[Candidate]:
    """The smallest set of whole characters (and END, EOS) holding top_p of the mass, most probable first.

    Units are found best-first (most probable first), so the set is exactly the
    smallest one. If the cap is hit first, the open partial characters join the
    candidates with their mass (whole=False): the set is then slightly larger.
    """
    stats = stats or SearchStats()
    stats.searches += 1
    order = itertools.count()
    # entry: (-logp, order, source at the parent, data up to the parent, option, whole)
    heap: list = [(-0.0, next(order), root, b"", None, False)]
    out: list[Candidate] = []
    mass, expansions = 0.0, 0
    while heap and mass < top_p:
        neg, _, parent, data, option, whole = heapq.heappop(heap)
        if whole or option in (END, EOS):
            out.append(Candidate(-neg, parent, data, option, True))
            mass += float(np.exp(-neg))
            continue
        if expansions >= max_expansions:
            stats.capped += 1
            out.append(Candidate(-neg, parent, data, option, False))
            out.extend(Candidate(-n, p, d, o, w or o in (END, EOS)) for n, _, p, d, o, w in sorted(heap))
            break
        expansions += 1
        node = parent if option is None else parent.advance(option)
        data = data if option is None else data + bytes([option])
        _push_children(heap, order, node, data, -neg)
    stats.expansions += expansions
    return out


def _nucleus_unit(root: Source, top_p: float, rng, stats: SearchStats, max_expansions: int) -> Unit | None:
    """Sample from the nucleus (see `nucleus`); a cut-off partial character is completed by exact sampling."""
    candidates = nucleus(root, top_p, stats, max_expansions)
    if not candidates:
        return None
    logps = np.asarray([c.logp for c in candidates])
    chosen = candidates[draw(np.exp(logps - logps.max()), rng)]
    if chosen.option in (END, EOS):
        return Unit(chosen.data, chosen.option, chosen.parent, chosen.logp)
    node = chosen.parent if chosen.option is None else chosen.parent.advance(chosen.option)
    data = chosen.data if chosen.option is None else chosen.data + bytes([chosen.option])
    if chosen.whole:
        return Unit(data, None, node, chosen.logp)
    return _complete_character(node, data, chosen.logp, rng)


def _push_children(heap: list, order, node: Source, data: bytes, logp: float) -> None:
    dist = node.distribution()
    if dist is None:
        return
    for terminal in (END, EOS):
        if dist[terminal] > 0:
            heapq.heappush(heap, (-(logp + log(dist[terminal])), next(order), node, data, terminal, False))
    for byte in np.flatnonzero(dist[:END] > 0):
        whole = pending_after(node.pending, int(byte)) == b""
        heapq.heappush(heap, (-(logp + log(dist[byte])), next(order), node, data, int(byte), whole))


def _complete_character(node: Source, data: bytes, logp: float, rng) -> Unit | None:
    """Sample byte by byte until the character completes (or the round ends)."""
    while node.pending:
        dist = node.distribution()
        if dist is None:
            return None
        option = draw(dist, rng)
        logp += log(dist[option])
        if option in (END, EOS):
            return Unit(data, option, node, logp)
        node, data = node.advance(option), data + bytes([option])
    return Unit(data, None, node, logp)
