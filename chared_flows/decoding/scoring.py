"""Scoring a continuation under an ensemble: per-byte log-probabilities and bits per character.

Exact mode: byte i's probability is the ensemble's next-byte distribution
after prompt + continuation[:i], each member summing over all tokenizations
(its beam), combined with the ensemble's rule. This is the character-level
metric that compares models with different tokenizers on the same text.

Chared mode: the probability that the chared *procedure* writes exactly these
bytes. A round can end (END) wherever some member has a token equal to the
in-round prefix, and where it ends changes the next round's state, so we sum
over every way of cutting the text into rounds:

    alpha[j]     = P(procedure wrote text[:j] and a round opens at j), alpha[0] = 1
    P(text[:i])  = sum_{j < i} alpha[j] * P_round_j(text[j:i])
    alpha[i]    += alpha[j] * P_round_j(text[j:i]) * P_round_j(END after text[j:i])

where P_round_j multiplies the combined in-round choices. One forward pass
per member per reachable round start j. Round starts holding less than
`prune_threshold` of P(text[:j]) are skipped and reported as pruned mass.
It is a property of the procedure (its END choices are a tokenizer
artifact), not of the models' text distribution: use exact mode to compare
models. Neither mode counts EOS after the continuation (prefix probability).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from chared_flows.decoding.exact import ExactBeam
from chared_flows.decoding.index import END, option_distribution
from chared_flows.decoding.members import MemberSession
from chared_flows.decoding.utf8 import split_complete

if TYPE_CHECKING:  # pragma: no cover
    from chared_flows.decoding.decoder import Ensemble

LN2 = math.log(2.0)


@dataclass
class ScoreResult:
    byte_logprobs: list[float]  # natural log, one per byte of continuation.encode("utf-8")
    total_bits: float
    bits_per_byte: float
    bits_per_char: float
    chars: int
    bytes: int
    pruned_mass: float  # exact: largest per-member pruned fraction; chared: pruned share of round starts
    forward_passes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_logprobs(cls, logprobs: list[float], text: str, pruned: float, passes: dict[str, int]) -> "ScoreResult":
        total_bits = -sum(logprobs) / LN2
        n_bytes, n_chars = len(logprobs), len(text)
        return cls(
            byte_logprobs=logprobs,
            total_bits=total_bits,
            bits_per_byte=total_bits / n_bytes if n_bytes else math.nan,
            bits_per_char=total_bits / n_chars if n_chars else math.nan,
            chars=n_chars,
            bytes=n_bytes,
            pruned_mass=pruned,
            forward_passes=passes,
        )


def _open_sessions(ens: "Ensemble", prompt) -> list[MemberSession | None]:
    sessions: list[MemberSession | None] = []
    for member, weight in zip(ens.members, ens.weights):
        session = member.open_session(prompt)
        session.check_prompt_fits()
        sessions.append(session if weight > 0 else None)
    return sessions


def _passes(ens: "Ensemble", sessions) -> dict[str, int]:
    return {n: s.runner.forward_passes for n, s in zip(ens.names, sessions) if s is not None}


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


def score_exact(ens: "Ensemble", prompt, text: str) -> ScoreResult:
    sessions = _open_sessions(ens, prompt)
    beams = [None if s is None else ExactBeam(s, ens.beam_width, ens.prune_threshold) for s in sessions]
    data = text.encode("utf-8")
    logprobs = []
    for i, byte in enumerate(data):
        pending = split_complete(data[:i])[1]
        dists = [None if b is None else b.distribution(pending) for b in beams]
        combined = ens.combine(dists, ens.weights)
        total = combined.sum() if combined.size else 0.0
        logprobs.append(_log(combined[byte] / total) if total > 0 else -math.inf)
        for beam in beams:
            if beam is not None and beam.alive:
                beam.advance(byte)
    pruned = max((b.pruned_mass for b in beams if b is not None), default=0.0)
    return ScoreResult.from_logprobs(logprobs, text, pruned, _passes(ens, sessions))


def score_chared(ens: "Ensemble", prompt, text: str) -> ScoreResult:
    sessions = _open_sessions(ens, prompt)
    data = text.encode("utf-8")
    n = len(data)
    log_alpha = np.full(n + 1, -math.inf)
    log_alpha[0] = 0.0
    log_prefix = np.full(n + 1, -math.inf)
    log_prefix[0] = 0.0
    log_threshold = math.log(ens.prune_threshold) if ens.prune_threshold > 0 else -math.inf
    pruned = 0.0
    for j in range(n):
        if log_alpha[j] == -math.inf:
            continue
        share = log_alpha[j] - log_prefix[j]
        if j > 0 and share < log_threshold:
            pruned += math.exp(share)  # this start's share of P(text[:j]), an upper bound of its loss
            continue
        _walk_round(ens, sessions, data, j, log_alpha, log_prefix)
    logprobs = [float(log_prefix[i + 1] - log_prefix[i]) for i in range(n)]
    return ScoreResult.from_logprobs(logprobs, text, min(pruned, 1.0), _passes(ens, sessions))


def _walk_round(ens, sessions, data: bytes, j: int, log_alpha: np.ndarray, log_prefix: np.ndarray) -> None:
    """One round opened at byte j, forced to follow data: add its END and prefix contributions."""
    pending = split_complete(data[:j])[1]
    states = []
    for session in sessions:
        ids = None if session is None else session.token_ids(data[:j])
        states.append(None if ids is None or not session.fits(ids) else session.round_state(ids, pending))
    indexes = [m.assets.index for m in ens.members]
    ranges = [(0, len(idx)) if st is not None else None for idx, st in zip(indexes, states)]
    log_round = log_alpha[j]
    for i in range(j, len(data)):
        conditionals, splits = [], []
        for k, st in enumerate(states):
            split = None if ranges[k] is None else indexes[k].split(st.sorted_probs, *ranges[k], i - j)
            splits.append(split)
            conditionals.append(None if split is None else option_distribution(split.masses, st.eos_mass if i == j else 0.0))
        combined = ens.combine(conditionals, ens.weights)
        total = combined.sum() if combined.size else 0.0
        if not total > 0:
            return
        if i > j and combined[END] > 0:
            log_alpha[i] = np.logaddexp(log_alpha[i], log_round + math.log(combined[END] / total))
        byte = data[i]
        if not combined[byte] > 0:
            return
        log_round += math.log(combined[byte] / total)
        log_prefix[i + 1] = np.logaddexp(log_prefix[i + 1], log_round)
        for k, split in enumerate(splits):
            ranges[k] = None if split is None or split.masses[byte] <= 0 else split.byte_range(byte)
