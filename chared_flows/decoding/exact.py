"""Exact mode: one member's next-byte distribution, summed over every tokenization of the text.

A member keeps a beam of *paths*. A path is a committed token sequence `ids`
plus `q`, the bytes of the next token read so far (the path ends inside that
token). Its weight is

    P(ids) * mass of the next tokens that start with q and are strictly longer than q.

Tokens *equal* to q ended at the current byte: when a byte is consumed, each
such token spawns a new boundary path (ids + [token], q = b""), whose next-token
distribution needs a forward pass. That pass is owed lazily: a boundary path's
weight is P(ids) before any pass (its next token has total mass 1), so we prune
first and run passes only for the survivors. Every mass is a range sum of the
member's PrefixIndex (no vocabulary loop).

Next byte b: sum over paths of P(ids) * mass(tokens starting with q + b).
EOS: sum over boundary paths only of P(ids) * p(EOS | ids). Both are then
masked to valid UTF-8 (at the byte level, unlike chared mode's token-level
mask: a token may legitimately end in the middle of a character here) and
renormalised over bytes + EOS. Special tokens other than EOS are never text,
so their mass is dropped by that renormalisation.

Defaults (measured in benchmarks/exact_mode.py, SmolLM2 and Gemma-3 on code):
prune_threshold=1e-3 drops paths holding under 0.1% of the beam's mass; over
150 bytes that pruned about 2% of the text's probability, i.e. at most
-log2(1 - 0.02) = 0.03 bits on the whole text, while running 2-3 forward
passes per canonical token instead of 4-6 at 1e-4. beam_width=8 never binds
at that threshold on those texts; it caps the cost on pathological ones.
`pruned_mass` is 1 - prod_t(kept share at step t): the share of the text's
probability (as the beam saw it) thrown away.

KV caches: one per path, not one LCP-rolled-back runner per member. Measured
(benchmarks/exact_mode.py notes, 1 thread): alternative tokenizations live
for many bytes, so rolling one cache back to the paths' common prefix re-fed
about 5 tokens per pass on Gemma (each paying its 262k-row output layer).
So a boundary path restores its parent's runner snapshot (copy-on-write, see
runner.py) and feeds exactly its one new token. Stateless runners (test
doubles) are simply called with the full ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from chared_flows.decoding.config import DecodeFields
from chared_flows.decoding.index import END, EOS, NUM_OPTIONS, Split
from chared_flows.decoding.ahead import queue_beam_ahead
from chared_flows.decoding.members import MemberSession
from chared_flows.decoding.rounds import Cursor, EnsembleRound, MemberRound, Rule
from chared_flows.decoding.backends.scheduler import gather
from chared_flows.decoding.utf8 import next_byte_mask, pending_after

# DecodeConfig's defaults (config.py declares each once); the threshold bounds the error in
# bits, see the module docstring.
DEFAULT_BEAM_WIDTH = DecodeFields.model_fields["beam_width"].default
DEFAULT_PRUNE_THRESHOLD = DecodeFields.model_fields["prune_threshold"].default
DEFAULT_BACKOFF_TOKENS = 4
# How pruning ranks a path inside a token: by the mass it can still read on (False, the
# default), or by its whole trie node, the tokens that just ended there included (True,
# genlm-bytes' rule; they also live on as boundary paths, so that mass counts twice).
# Measured in benchmarks/prune_rank.py: at coarse settings the default drops the text's own
# continuation at token boundaries (5 / 0.05 on code: 14.5 bits off where the node rule is
# 0.9 off, in 23 passes instead of 108); from 3e-3 down the node rule keeps more paths alive
# and runs up to 2.2x the passes for the same accuracy. Benchmarks toggle it.
RANK_BY_NODE = False
ENDING_SHARE = 1e-3  # greedy: a member commits to a unit's END if this share of its mass ends there


@dataclass
class Path:
    ids: tuple[int, ...]
    logp: float  # log P(ids), relative to the anchor context
    q: bytes = b""  # bytes of the next token consumed so far
    probs: np.ndarray | None = None  # next-token probs after ids (sorted order); None: pass owed
    eos: float = 0.0
    split: Split | None = None  # tokens starting with q, split by their byte at depth len(q)
    lo: int = 0  # the tokens starting with q are [lo, hi) of the sorted index
    hi: int = 0
    cache: object | None = None  # the runner's snapshot after this path's pass
    parent_cache: object | None = None  # the snapshot this path's pass starts from
    queued_ahead: bool = False  # scoring: the passes of the paths it spawns are queued (ahead.queue_beam_ahead)

    def rank_weight(self) -> float:
        """The weight pruning ranks by under RANK_BY_NODE: the tokens ending at q counted in."""
        if not self.q:
            return self.logp
        node = float(self.split.masses[:END].sum() + self.split.masses[END])
        return self.logp + math.log(node) if node > 0 else -math.inf

    def log_weight(self) -> float:
        if not self.q:
            return self.logp
        longer = float(self.split.masses[:END].sum())
        return self.logp + math.log(longer) if longer > 0 else -math.inf


class ExactBeam:
    """One member's beam of tokenizations of the text read so far.

    Persistent: `advance(byte)` returns a new beam and leaves this one valid, so a
    search can look ahead from it. Forward passes owed by a path run once, when a
    distribution is first asked for, and are shared by every beam holding the path
    (the runner restores each path's parent snapshot, so the order does not matter).
    """

    def __init__(self, session: MemberSession, paths: list[Path], beam_width: int, log_threshold: float,
                 kept_log: float = 0.0, pruned_log: float = -math.inf):
        self.session = session
        self.index = session.member.assets.index
        self.paths = paths
        self.beam_width = beam_width
        self.log_threshold = log_threshold
        self.kept_log = kept_log  # log of the fraction of mass that pruning kept, over all steps
        self.pruned_log = pruned_log  # log of the mass pruning dropped, all steps (P relative to the anchor)
        self.window_full = False
        self.reseeds = 0  # times this member's beam lost every path and was re-seeded
        self.anchor: tuple[tuple[int, ...], bytes] | None = None  # start(): the anchor ids and the tail read
        self._dist: dict[bytes, np.ndarray | None] = {}

    @classmethod
    def start(
        cls,
        session: MemberSession,
        beam_width: int = DEFAULT_BEAM_WIDTH,
        prune_threshold: float = DEFAULT_PRUNE_THRESHOLD,
        backoff_tokens: int = DEFAULT_BACKOFF_TOKENS,
        generated: bytes = b"",
    ) -> "ExactBeam":
        """A beam at the end of prompt + `generated`, the last tokens read as bytes.

        Subtle: a narrow beam can lose the canonical path while it reads the tail (a
        longer token wins and then cannot read on); we then back off fewer tokens, down
        to none, which always survives.
        """
        log_threshold = math.log(prune_threshold) if prune_threshold > 0 else -math.inf
        for backoff in range(backoff_tokens, -1, -1):
            anchor_ids, tail = session.ids.anchor(backoff, generated)
            beam = cls(session, [Path(tuple(anchor_ids), 0.0)], beam_width, log_threshold)
            for byte in tail:
                beam = beam.advance(byte)
            if beam.alive or beam.window_full:
                break
        beam.anchor = (tuple(anchor_ids), tail)  # where its paths' probabilities are relative to
        return beam

    def reseeded(self, generated: bytes, byte: int, pending: bytes) -> "ExactBeam":
        """A new beam that can read `byte`, from the canonical tokenization of the text so far.

        Pruning can drop the only paths that read on (" fun" pruned for " func..." before
        "ky"); genlm-bytes heals the same way. We back off as many tokens as the first
        beam did, then fewer, down to none (the canonical path itself, at a token
        boundary), and keep the first beam that gives `byte` any mass. The pruned mass
        stays counted; `reseeds` counts the recoveries.
        """
        threshold = math.exp(self.log_threshold) if self.log_threshold > -math.inf else 0.0
        beam = self
        for backoff in range(DEFAULT_BACKOFF_TOKENS, -1, -1):
            beam = ExactBeam.start(self.session, self.beam_width, threshold, backoff, generated)
            dist = beam.distribution(pending)
            if dist is not None and dist[byte] > 0:
                break
        beam.kept_log += self.kept_log
        beam.reseeds = self.reseeds + 1
        return beam

    @property
    def pruned_mass(self) -> float:
        """Fraction of the text's probability (as the beam saw it) dropped by pruning, all steps together."""
        return -math.expm1(self.kept_log)

    @property
    def kept_mass_log(self) -> float:
        """log of the mass the kept paths hold: a certified lower bound on log P(text read | anchor).

        Each path is a distinct way of writing the text (its tokens, and for a path inside a
        token, the tokens that start with the bytes read and go on), so their masses add up
        to at most the model's probability that its output starts with the text. No
        renormalisation: unlike the chain of next-byte conditionals, pruning can only lower it.
        """
        weights = [p.log_weight() for p in self.paths]
        return float(np.logaddexp.reduce(weights)) if weights else -math.inf

    @property
    def alive(self) -> bool:
        return bool(self.paths)

    def distribution(self, pending: bytes) -> np.ndarray | None:
        """Next-option distribution [bytes 0..255, END (always 0), EOS]; None if no path is left."""
        if pending in self._dist:
            return self._dist[pending]
        self._run_owed_passes()
        if not self.paths:
            return None
        ref = max(p.logp for p in self.paths)
        out = np.zeros(NUM_OPTIONS)
        for path in self.paths:
            scale = math.exp(path.logp - ref)
            out[:END] += scale * path.split.masses[:END]
            if not path.q:
                out[EOS] += scale * path.eos
        out[:END] *= next_byte_mask(pending)
        if pending:  # EOS only at a character boundary
            out[EOS] = 0.0
        total = out.sum()
        self._dist[pending] = out / total if total > 0 else None
        return self._dist[pending]

    def advance(self, byte: int) -> "ExactBeam":
        """The beam one byte further: extend every path that can read it; spawn boundary paths; prune."""
        return self._successor(self._read(byte))

    def ending(self, byte: int, min_share: float) -> "ExactBeam | None":
        """The beam one byte further *given that the current token ends at this byte*; None if it does not.

        Greedy's unit in exact mode is "how the current token ends"; once a unit is
        written, only the paths whose token ended there are the ones its probability
        counted. The others are still inside a longer token and must write its rest:
        kept, they are what made greedy myopic (after one "*" the paths inside "**",
        "***", ... make "one more *" the best token end again and again, 39 stars where
        the model's own greedy writes one line). So the unit's choice is committed:
        this beam keeps the ended paths only, provided they hold at least `min_share`
        of the mass that reads `byte` (below it, another member's END cut here and this
        member would not end its token here: see ENDING_SHARE above).
        """
        new = self._read(byte)
        ended = [p for p in new if not p.q]
        if not ended:
            return None
        weights = np.asarray([p.log_weight() for p in new])
        share = math.exp(np.logaddexp.reduce(weights[[not p.q for p in new]]) - np.logaddexp.reduce(weights))
        if not share >= min_share or not share > 0:
            return None
        return self._successor(ended)

    def _read(self, byte: int) -> list[Path]:
        self._run_owed_passes()
        new: list[Path] = []
        for path in self.paths:
            if path.split.masses[byte] > 0:
                new.extend(self._extend(path, byte))
        return new

    def _successor(self, paths: list[Path]) -> "ExactBeam":
        beam = ExactBeam(self.session, paths, self.beam_width, self.log_threshold, self.kept_log, self.pruned_log)
        beam.window_full, beam.reseeds = self.window_full, self.reseeds
        beam._prune()
        return beam

    def lookahead(self) -> MemberRound | None:
        """The rest of the current token as a round: one cursor per path, weighted by P(path).

        No forward pass beyond the ones owed now: the round asks only how each path's
        current token ends (END), which is the unit greedy search compares.
        """
        self._run_owed_passes()
        if not self.paths:
            return None
        ref = max(p.logp for p in self.paths)
        cursors = [
            Cursor(math.exp(p.logp - ref), p.probs, 0.0 if p.q else p.eos, p.lo, p.hi, len(p.q))
            for p in self.paths
        ]
        return MemberRound(self.index, cursors)

    def _extend(self, path: Path, byte: int) -> list[Path]:
        lo, hi = path.split.byte_range(byte)
        q = path.q + bytes([byte])
        split = self.index.split(path.probs, lo, hi, len(q))
        out = []
        # Tokens equal to q end here (several ids can share bytes, e.g. "A" and <0x41>).
        end_lo, end_hi = int(split.starts[END]), int(split.ends[END])
        for k in range(end_lo, end_hi):
            p = float(path.probs[k])
            if p > 0:
                token = int(self.index.sorted_ids[k])
                out.append(Path(path.ids + (token,), path.logp + math.log(p), parent_cache=path.cache))
        if split.masses[:END].sum() > 0:
            out.append(Path(path.ids, path.logp, q, path.probs, path.eos, split, lo, hi, path.cache))
        return out

    def _prune(self) -> None:
        if not self.paths:
            return
        weights = np.asarray([p.log_weight() for p in self.paths])
        ranks = np.asarray([p.rank_weight() for p in self.paths]) if RANK_BY_NODE else weights
        order = np.argsort(-ranks, kind="stable")
        total = np.logaddexp.reduce(weights)
        keep = [i for rank, i in enumerate(order) if rank == 0 or (
            rank < self.beam_width and ranks[i] - total >= self.log_threshold)]
        if len(keep) < len(self.paths):
            kept = np.logaddexp.reduce(weights[keep])
            self.kept_log += float(kept - total)
            # Each dropped path's weight bounds the mass of everything it could have become.
            dropped = float(np.logaddexp.reduce(np.delete(weights, keep)))
            self.pruned_log = float(np.logaddexp(self.pruned_log, dropped))
        self.paths = [self.paths[i] for i in keep if weights[i] > -math.inf]

    def owed_passes(self) -> list[tuple[Path, tuple]]:
        """Queue the forward passes the surviving paths owe (settle them with `settle`).

        Each path's pass runs on a runner restored from its parent's snapshot, so the
        passes of all paths (and of all members, see ExactSource.prepare) are
        independent and leave together as one batched forward per member.
        """
        owed = [p for p in self.paths if p.probs is None]
        for path in owed:
            if not self.session.ids.fits(path.ids):
                self.window_full = True
                self.paths = []
                return []
        queued = []
        for path in owed:
            known = self.session.ahead.prefilled(path.ids)
            if known is not None:  # scoring: a prefix of the text's canonical tokens, computed at once
                self.settle(path, known)
                continue
            request = self.session.ahead.take(path.ids)  # scoring: queued before it was owed (queue_beam_ahead)
            if request is None:
                request = self.session.submit_probs(path.ids, parent=path.parent_cache, fork=True)
            queued.append((path, request))
        return queued

    def settle(self, path: Path, result: tuple) -> None:
        path.probs, path.eos, path.cache = result
        path.parent_cache = None  # let the parent's cache be freed once no path needs it
        path.lo, path.hi = 0, len(self.index)
        path.split = self.index.split(path.probs, 0, len(self.index), 0)

    def _run_owed_passes(self) -> None:
        owed = self.owed_passes()
        for (path, _), result in zip(owed, gather([request for _, request in owed])):
            self.settle(path, result)


class ExactSource:
    """The ensemble in exact mode as a byte source: the members' beams combined by the rule."""

    def __init__(self, beams: Sequence[ExactBeam | None], rule: Rule, weights: np.ndarray, pending: bytes = b"",
                 generated: bytes = b""):
        self.beams = tuple(beams)
        self.rule = rule
        self.weights = weights
        self.pending = pending
        self.generated = generated  # the bytes written after the prompt (re-seeding starts from them)
        self._dist: np.ndarray | None | bool = False
        self._children: dict[int, ExactSource] = {}
        self._ended: dict[int, ExactSource] = {}  # children where greedy's unit ended (see ending)

    @property
    def window_full(self) -> bool:
        return any(b is not None and b.window_full for b in self.beams)

    @property
    def reseeds(self) -> list[int]:
        return [0 if b is None else b.reseeds for b in self.beams]

    def prepare(self) -> None:
        """Run every pass the members' beams owe at this byte, all members at once (see scheduler.py)."""
        owed = [(beam, path, request) for beam in self.beams if beam is not None
                for path, request in beam.owed_passes()]
        for (beam, path, _), result in zip(owed, gather([request for _, _, request in owed])):
            beam.settle(path, result)

    def queue_ahead(self, ahead: bytes) -> None:
        """Scoring: queue the passes the known text `ahead` will owe (ahead.queue_beam_ahead)."""
        for beam in self.beams:
            if beam is not None:
                queue_beam_ahead(beam, ahead)

    def member_distributions(self) -> list[np.ndarray | None]:
        self.prepare()
        return [None if b is None else b.distribution(self.pending) for b in self.beams]

    def distribution(self) -> np.ndarray | None:
        if self._dist is False:
            combined = self.rule(self.member_distributions(), self.weights)
            total = combined.sum() if combined.size else 0.0
            self._dist = combined / total if total > 0 else None
        return self._dist

    def ready_for(self, byte: int) -> "ExactSource":
        """This source, with every member whose beam cannot read `byte` re-seeded here (see reseeded).

        A member that cannot read it even then abstains at this byte, and tries again at the next.
        """
        dists = self.member_distributions()
        stuck = [k for k, (b, d) in enumerate(zip(self.beams, dists))
                 if b is not None and not b.window_full and (d is None or not d[byte] > 0)]
        if not stuck:
            return self
        beams = list(self.beams)
        for k in stuck:
            beams[k] = beams[k].reseeded(self.generated, byte, self.pending)
        return ExactSource(beams, self.rule, self.weights, self.pending, self.generated)

    def advance(self, byte: int) -> "ExactSource":
        child = self._children.get(byte)
        if child is None:
            ready = self.ready_for(byte)
            beams = [b.advance(byte) if b is not None and b.alive else b for b in ready.beams]
            child = ExactSource(beams, self.rule, self.weights, pending_after(self.pending, byte),
                                self.generated + bytes([byte]))
            self._children[byte] = child
        return child

    def ending(self, data: bytes) -> "ExactSource":
        """The source after greedy's unit `data` + END: members whose token ends there commit to it.

        See ExactBeam.ending. A member alone commits wherever its token can end (the
        unit is its own choice); in an ensemble a member commits where at least
        ENDING_SHARE of its mass ends its token at the unit's end. Subtle: any token has
        *some* probability under a softmax, so committing wherever one ends would force
        a member onto splits it would never write (P 1e-22) whenever another member's
        token ended there; such a member keeps reading its own longer token.
        """
        source = self
        for byte in data[:-1]:
            source = source.advance(byte)
        return source._ending(data[-1]) if data else source

    def _ending(self, byte: int) -> "ExactSource":
        child = self._ended.get(byte)
        if child is None:
            ready = self.ready_for(byte)
            active = [k for k, b in enumerate(ready.beams) if b is not None and b.alive and self.weights[k] > 0]
            beams = []
            for k, beam in enumerate(ready.beams):
                ended = None
                if beam is not None and beam.alive:
                    ended = beam.ending(byte, 0.0 if active == [k] else ENDING_SHARE)
                if ended is None and beam is not None and beam.alive:
                    ended = beam.advance(byte)
                beams.append(beam if ended is None else ended)
            child = ExactSource(beams, self.rule, self.weights, pending_after(self.pending, byte),
                                self.generated + bytes([byte]))
            self._ended[byte] = child
        return child

    def lookahead(self, origin: int = 0) -> EnsembleRound:
        """A round over the rest of each member's current token (greedy's unit in exact mode).

        `origin`: which of the step's lookaheads this is (ExactSteps' bookkeeping, see ExactSteps._next_lookahead).
        """
        self.prepare()
        members = [None if b is None else b.lookahead() for b in self.beams]
        return EnsembleRound(members, self.rule, self.weights, self.pending, origin=origin)
