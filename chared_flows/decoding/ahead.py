"""Exact scoring of a known text: passes computed before they are owed.

When the text is given, the passes a beam path will owe at later bytes are known
early: one prefill pass over the text's canonical tokens serves every path on a
prefix of them (`prefill_text`, `prefilled`), and the rest are queued ahead to leave
with the next batch the scoring waits for (`queue`, `take`, `cancel`; which passes:
`queue_beam_ahead`).
"""

from __future__ import annotations

import math
from concurrent.futures import Future
from typing import Any, Sequence

import numpy as np

from chared_flows.decoding.backends.protocol import PassCounts
from chared_flows.decoding.backends.scheduler import PassScheduler


class AheadPasses:
    """One session's passes computed ahead of need (MemberSession.ahead)."""

    def __init__(self, session: Any):  # session: members.MemberSession (which imports this module)
        self.session = session
        self._prefill = None  # one pass over the text's canonical tokens (see prefill_text)
        self._ahead: dict[tuple[int, ...], tuple[PassScheduler, Future]] = {}  # see queue
        self._queued: set[tuple[int, ...]] = set()  # every id sequence ever queued ahead (none twice)
        self._peeked: dict[tuple[int, ...], tuple] = {}  # prefill results looked at ahead (see prefilled)
        self.token_ends: dict[tuple, list] = {}  # _token_ends' memo (below)

    def queue(self, ids: Sequence[int], parent: Any) -> None:
        """Exact scoring: queue now the pass a path will owe once the known text ends its token.

        It waits in the scheduler (eager=False) and leaves with the next batch this scoring
        needs, so the passes owed at many later bytes share one forward; `take` hands
        it over when owed, `cancel` drops the ones never owed (their path was pruned).
        """
        key = tuple(ids)
        if key in self._queued or not self.session.ids.fits(ids) or (self._prefill is not None and self._prefill.covers(ids)):
            return
        self._queued.add(key)
        self._ahead[key] = self.session.submit_probs(ids, parent=parent, fork=True, eager=False)

    def take(self, ids: Sequence[int]) -> tuple[PassScheduler, Future] | None:
        return self._ahead.pop(tuple(ids), None)

    def cancel(self) -> None:
        self.session.scheduler.withdraw(future for _, future in self._ahead.values())
        self._ahead.clear()
        self._peeked.clear()
        self.token_ends.clear()

    def prefill_text(self, text: bytes) -> None:
        """Exact scoring: one pass over the canonical tokens of prompt + `text` serves every pass
        owed on a prefix of them (`prefilled`). Backends without `prefill` keep one pass each."""
        prefill = getattr(self.session.member.assets.backend, "prefill", None)
        ids = self.session.ids.canonical_ids(text)
        if prefill is None or not ids or not self.session.ids.fits(ids):
            return
        self._prefill = prefill(ids)  # None: the backend could not (each prefix then has its own pass)
        if self._prefill is not None:
            self.session.forked.add(PassCounts(forward_passes=1, tokens_fed=len(ids)))

    def prefilled(self, ids: Sequence[int], peek: bool = False) -> tuple | None:
        """(sorted probs, EOS mass, snapshot) for `ids` from the prefill, or None if it does not cover them.

        peek=True (looking ahead, see queue_beam_ahead) keeps the result for the call that
        settles the path, which takes it (a softmax over the vocabulary is not free).
        """
        key = tuple(ids)
        known = self._peeked.get(key) if peek else self._peeked.pop(key, None)
        if known is not None:
            return known
        if self._prefill is None or not self._prefill.covers(ids):
            return None
        probs, eos = self.session.probs(self._prefill.logits_after(ids))
        known = probs, eos, self._prefill.snapshot_after(ids)
        if peek:
            self._peeked[key] = known
        return known


def queue_beam_ahead(beam: Any, ahead: bytes, horizon: int = 64) -> None:
    """Scoring, where the text `ahead` is known: queue the passes of the paths `beam` (an
exact.ExactBeam) will spawn.

    A path's current token can end at several later bytes of the text, each spawning a
    boundary path that owes a pass from this path's cache. Queued now, those passes
    leave together with the next pass the scoring waits for, instead of one decode step
    each. Where a spawn is a prefix of the text's canonical tokens, the prefill already
    holds its pass: it is followed too (its own spawns are queued), up to `horizon`
    bytes ahead, so one batch holds the passes of many canonical tokens to come.

    Only spawns sure to pass the prune threshold when spawned are queued: `n` bytes
    ahead the beam's mass is at most (relative to now) bound[n], the mass of every
    path's tokens that start with the bytes read so far plus, for each path spawned on
    the way, its own weight (its descendants weigh no more) or, where it is followed,
    its tokens' mass; a spawn of weight w survives if w >= threshold * bound[n] (beam
    width aside). Work: a few binary searches per path and byte, once per path.
    """
    fresh = [p for p in beam.paths if p.probs is not None and not p.queued_ahead]
    if not fresh:
        return
    horizon = min(len(ahead), horizon)
    ref = max(p.logp for p in beam.paths)
    bound = np.zeros(horizon + beam.index.max_len + 2)
    spawns: list[tuple[int, float, object, tuple]] = []  # (bytes ahead, weight, parent cache, ids)
    # (offset, weight relative to ref, probs, ids, cache, q, lo, hi, whose spawns get queued)
    walks = [(0, math.exp(p.logp - ref), p.probs, p.ids, p.cache, p.q, p.lo, p.hi, p in fresh)
             for p in beam.paths if p.probs is not None]
    while walks:
        offset, scale, probs, ids, cache, q, lo, hi, queue = walks.pop()
        for at, mass, ends in _token_ends(beam, ids, q, lo, hi, probs, ahead[offset:]):
            at += offset
            bound[at] += scale * mass
            for k, p in ends:
                weight, child = scale * p, ids + (int(beam.index.sorted_ids[k]),)
                known = beam.session.ahead.prefilled(child, peek=True) if at < horizon else None
                if known is None:
                    bound[at + 1:] += weight  # its descendants weigh no more than it
                else:  # a prefix of the canonical tokens: its pass is known, follow it
                    walks.append((at, weight, known[0], child, known[2], b"", 0, len(beam.index), True))
                if queue and at <= horizon:
                    spawns.append((at, weight, cache, child))
    threshold = math.exp(beam.log_threshold) if beam.log_threshold > -math.inf else 0.0
    for at, weight, cache, ids in spawns:
        if weight >= threshold * bound[at]:
            beam.session.ahead.queue(ids, cache)
    for path in fresh:
        path.queued_ahead = True


def _token_ends(beam: Any, ids: tuple, q: bytes, lo: int, hi: int, probs: np.ndarray, ahead: bytes) -> list:
    """Where the current token after `ids` (read so far: q) can end along `ahead`, memoised per (ids, q).

    [(bytes ahead, mass of the tokens that start with q + those bytes, [(sorted index, p) of the
    tokens equal to it])]. The node's place in the text is fixed by ids and q, so the walk
    is too: queue_beam_ahead meets the same nodes at many bytes (Gemma-3: 16 of 40 s without this).
    """
    key = (ids, q)
    walk = beam.session.ahead.token_ends.get(key)
    if walk is None:
        walk = []
        for n, lo_n, hi_n, end in beam.index.prefix_ranges(q + ahead, lo, hi, len(q)):
            ends = [(k, float(probs[k])) for k in range(lo_n, end) if probs[k] > 0]
            walk.append((n - len(q), float(probs[lo_n:hi_n].sum()), ends))
        beam.session.ahead.token_ends[key] = walk
    return walk
