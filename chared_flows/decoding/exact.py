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
from functools import lru_cache

import numpy as np

from chared_flows.decoding.index import END, EOS, NUM_OPTIONS, Split
from chared_flows.decoding.members import MemberSession
from chared_flows.decoding.utf8 import incomplete_tail_start

DEFAULT_BEAM_WIDTH = 8
DEFAULT_PRUNE_THRESHOLD = 1e-3  # see the module docstring: bounds the error in bits
DEFAULT_BACKOFF_TOKENS = 4


@dataclass
class Path:
    ids: tuple[int, ...]
    logp: float  # log P(ids), relative to the anchor context
    q: bytes = b""  # bytes of the next token consumed so far
    probs: np.ndarray | None = None  # next-token probs after ids (sorted order); None: pass owed
    eos: float = 0.0
    split: Split | None = None  # tokens starting with q, split by their byte at depth len(q)
    cache: object | None = None  # the runner's snapshot after this path's pass
    parent_cache: object | None = None  # the snapshot this path's pass starts from

    def log_weight(self) -> float:
        if not self.q:
            return self.logp
        longer = float(self.split.masses[:END].sum())
        return self.logp + math.log(longer) if longer > 0 else -math.inf


@lru_cache(maxsize=4096)
def byte_mask(pending: bytes) -> np.ndarray:
    """Bytes that keep `pending + byte` a valid UTF-8 prefix (pending: the incomplete tail)."""
    return np.fromiter((incomplete_tail_start(pending + bytes([b])) is not None for b in range(256)), bool, 256)


class ExactBeam:
    """One member's beam of tokenizations of the text read so far."""

    def __init__(
        self,
        session: MemberSession,
        beam_width: int = DEFAULT_BEAM_WIDTH,
        prune_threshold: float = DEFAULT_PRUNE_THRESHOLD,
        backoff_tokens: int = DEFAULT_BACKOFF_TOKENS,
    ):
        self.session = session
        self.index = session.member.assets.index
        self.beam_width = beam_width
        self.log_threshold = math.log(prune_threshold) if prune_threshold > 0 else -math.inf
        self.kept_log = 0.0  # log of the fraction of mass that pruning kept, over all steps
        self.window_full = False
        anchor_ids, self.prompt_tail = session.anchor(backoff_tokens)
        self.paths = [Path(tuple(anchor_ids), 0.0)]
        for byte in self.prompt_tail:
            self.advance(byte)

    @property
    def pruned_mass(self) -> float:
        """Fraction of the text's probability (as the beam saw it) dropped by pruning, all steps together."""
        return -math.expm1(self.kept_log)

    @property
    def alive(self) -> bool:
        return bool(self.paths)

    def distribution(self, pending: bytes) -> np.ndarray | None:
        """Next-option distribution [bytes 0..255, END (always 0), EOS]; None if no path is left."""
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
        out[:END] *= byte_mask(pending)
        if pending:  # EOS only at a character boundary
            out[EOS] = 0.0
        total = out.sum()
        return out / total if total > 0 else None

    def advance(self, byte: int) -> None:
        """Consume one byte: extend every path that can read it; spawn boundary paths; prune."""
        self._run_owed_passes()
        new: list[Path] = []
        for path in self.paths:
            if path.split.masses[byte] > 0:
                new.extend(self._extend(path, byte))
        self.paths = new
        self._prune()

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
            out.append(Path(path.ids, path.logp, q, path.probs, path.eos, split, path.cache))
        return out

    def _prune(self) -> None:
        if not self.paths:
            return
        weights = np.asarray([p.log_weight() for p in self.paths])
        order = np.argsort(-weights, kind="stable")
        total = np.logaddexp.reduce(weights)
        keep = [i for rank, i in enumerate(order) if rank == 0 or (
            rank < self.beam_width and weights[i] - total >= self.log_threshold)]
        if len(keep) < len(self.paths):
            kept = np.logaddexp.reduce(weights[keep])
            self.kept_log += float(kept - total)
        self.paths = [self.paths[i] for i in keep if weights[i] > -math.inf]

    def _run_owed_passes(self) -> None:
        # Sorted by ids, consecutive passes share long prefixes: the runner's
        # LCP rollback then feeds only the last token or two.
        owed = sorted((p for p in self.paths if p.probs is None), key=lambda p: p.ids)
        for path in owed:
            if not self.session.fits(path.ids):
                self.window_full = True
                self.paths = []
                return
            path.probs, path.eos = self._forward(path)
            path.split = self.index.split(path.probs, 0, len(self.index), 0)

    def _forward(self, path: Path) -> tuple[np.ndarray, float]:
        runner = self.session.runner
        if path.parent_cache is not None:
            runner.restore(path.parent_cache)  # copy-on-write: the parent's state stays valid for its siblings
        result = self.session.next_token_probs(path.ids)
        path.cache = runner.snapshot()
        path.parent_cache = None  # let the parent's cache be freed once no path needs it
        return result
