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

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from chared_flows.decoding.exact import ExactBeam, ExactSource
from chared_flows.decoding.index import END
from chared_flows.decoding.driver import ending_tokens, open_round, open_sessions
from chared_flows.decoding.members import Member
from chared_flows.decoding.rounds import EnsembleRound
from chared_flows.decoding.backends.scheduler import Client, bound
from chared_flows.decoding.utf8 import split_complete
from chared_flows.errors import ContextWindowError


class Scorable(Protocol):
    """What scoring needs of an ensemble (decoder.Ensemble has it; no import circle)."""

    members: Sequence[Member]
    names: Sequence[str]
    weights: np.ndarray
    combine: Any
    config: Any

LN2 = math.log(2.0)
QUEUE_AHEAD = True  # exact scoring queues the passes of later bytes ahead (ahead.queue_beam_ahead); benchmarks toggle it


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
    reseeds: dict[str, int] = field(default_factory=dict)  # exact: beams re-seeded after losing every path
    # exact: per member, a certified upper bound (up to float rounding) on its total bits of the
    # text given the prompt, the prompt's last tokens summed over their tokenizations as exact
    # mode reads them (the kept paths' mass, not renormalised: pruning can only raise it).
    # total_bits is the chain of renormalised next-byte conditionals, an estimate that pruning
    # can push below the true bits.
    bound_bits: dict[str, float] = field(default_factory=dict)
    # exact, rules "mixture" and "product": a certified upper bound on the ensemble's own bits,
    # sum_k w_k * bound_bits[k] (see ensemble_bound_bits); None where it does not hold.
    ensemble_bound_bits: float | None = None

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


def _passes(ens: Scorable, sessions) -> dict[str, int]:
    return {n: s.pass_counts().forward_passes for n, s in zip(ens.names, sessions) if s is not None}


def _too_long(ens: Scorable, sessions, position: int) -> ContextWindowError:
    """Scoring on without a member would silently score the rest by the others alone."""
    windows = {n: s.member.assets.context_window for n, s in zip(ens.names, sessions) if s is not None}
    return ContextWindowError(
        f"prompt + text reach a member's context window at byte {position} of the text "
        f"(windows: {windows}); score a shorter text or split it"
    )


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


def scoring(score):
    """Run a scoring function as a scheduler client, so concurrent scorings share batched passes."""

    @functools.wraps(score)
    def wrapped(ens: Scorable, prompt, text: str) -> ScoreResult:
        sessions = open_sessions(ens.members, ens.weights, prompt)
        with bound(Client(s.scheduler for s in sessions if s is not None)):
            return score(ens, sessions, text)

    return wrapped


@scoring
def score_exact(ens: Scorable, sessions, text: str) -> ScoreResult:
    cfg = ens.config
    for session in sessions:
        if session is not None:
            session.ahead.prefill_text(text.encode("utf-8"))
    beams = [None if s is None else ExactBeam.start(s, cfg.beam_width, cfg.prune_threshold) for s in sessions]
    prompt_bounds = [None if b is None else _upper_log(b) for b in beams]
    source = ExactSource(beams, ens.combine, ens.weights)
    logprobs = []
    data = text.encode("utf-8")
    try:
        for position, byte in enumerate(data):
            source = source.ready_for(byte)  # a member whose beam lost every path reading on is re-seeded
            dist = source.distribution()
            if source.window_full:
                raise _too_long(ens, sessions, position)
            logprobs.append(_log(dist[byte]) if dist is not None else -math.inf)
            if QUEUE_AHEAD:
                source.queue_ahead(data[position:])  # later bytes' passes join the next batch
            source = source.advance(byte)
    finally:
        for session in sessions:
            if session is not None:
                session.ahead.cancel()
    pruned = max((b.pruned_mass for b in source.beams if b is not None), default=0.0)
    result = ScoreResult.from_logprobs(logprobs, text, pruned, _passes(ens, sessions))
    result.reseeds = {n: r for n, r in zip(ens.names, source.reseeds) if r}
    result.bound_bits = _bound_bits(ens.names, source.beams, prompt_bounds)
    result.ensemble_bound_bits = ensemble_bound_bits(ens.config.rule, ens.weights, ens.names, result.bound_bits)
    return result


def _upper_log(beam: ExactBeam) -> float:
    """log of an upper bound on P(what the beam read | anchor): the kept mass plus every pruned path's."""
    return float(np.logaddexp(beam.kept_mass_log, beam.pruned_log))


def _bound_bits(names, beams, prompt_bounds) -> dict[str, float]:
    """Each member's certified upper bound on its bits of the text (none for a re-seeded beam).

    P(text | prompt) >= (kept mass after the text) / (upper bound on P(prompt tail)), both
    relative to the same anchor (ExactBeam.kept_mass_log). A re-seeded beam restarted from
    another anchor, so its masses do not compare.
    """
    out = {}
    for name, beam, prompt_log in zip(names, beams, prompt_bounds):
        if beam is not None and prompt_log is not None and not beam.reseeds:
            out[name] = (prompt_log - beam.kept_mass_log) / LN2
    return out


# Rules whose combined conditional is never below the weighted geometric mean of the members'.
GEOMETRIC_MEAN_BOUNDED = ("mixture", "product")


def ensemble_bound_bits(rule: str, weights: np.ndarray, names, bound_bits: dict[str, float]) -> float | None:
    """A certified upper bound on the ensemble's bits of the text: sum_k w_k * bound_bits[k].

    The ensemble's bits are a chain of combined conditionals, sum_t -log2 q_t, and no chain
    of conditionals telescopes to the kept masses (each step would need an upper bound on
    every pruned path's later mass, which grows out of all proportion). The weighted
    geometric mean does: at each byte, mixture's q_t = sum_k w_k p_kt >= prod_k p_kt^w_k
    (weighted AM >= GM), and product's q_t = prod_k p_kt^w_k / Z_t with Z_t <= 1 (the same
    inequality summed over the options). Over the text, prod_t prod_k p_kt^w_k =
    prod_k P_k(text | prompt)^w_k, and each member's bound_bits bounds -log2 of that.
    It is looser than the members' own bounds by the ensemble's gain over them (the
    weighted average's bits minus the ensemble's). None for "adaptive" (its weights move
    per byte, so the product does not telescope) and when a member with weight > 0 has no
    bound (re-seeded).
    """
    active = [(name, float(w)) for name, w in zip(names, weights) if w > 0]
    if any(name not in bound_bits for name, _ in active):
        return None
    if len(active) > 1 and rule not in GEOMETRIC_MEAN_BOUNDED:
        return None  # (one member alone is itself under every rule)
    return sum(w * bound_bits[name] for name, w in active) / sum(w for _, w in active)


@scoring
def score_chared(ens: Scorable, sessions, text: str) -> ScoreResult:
    """Forward algorithm over round boundaries; a state is (position, every member's token ids).

    Generation continues a member from its own token when that token ended the round
    (TokenTrack.follow, session.ids), so where a round ends changes what each member sees next:
    the states at a position are the distinct id sequences that reach it. States are
    pruned like exact mode's beam (beam_width per position, prune_threshold share).
    """
    data = text.encode("utf-8")
    n = len(data)
    states: list[dict[tuple, float]] = [{} for _ in range(n + 1)]
    states[0][tuple(None if s is None else tuple(s.ids.token_ids(b"")) for s in sessions)] = 0.0
    log_prefix = np.full(n + 1, -math.inf)
    log_prefix[0] = 0.0
    cfg = ens.config
    log_threshold = math.log(cfg.prune_threshold) if cfg.prune_threshold > 0 else -math.inf
    pruned = 0.0
    for j in range(n):
        ranked = sorted(states[j].items(), key=lambda kv: -kv[1])
        for rank, (key, log_alpha) in enumerate(ranked):
            share = log_alpha - log_prefix[j]
            if j > 0 and (rank >= cfg.beam_width or share < log_threshold):
                pruned += math.exp(share)  # this state's share of P(text[:j]), an upper bound of its loss
                continue
            _walk_round(ens, sessions, data, j, key, log_alpha, states, log_prefix)
        states[j] = {}  # done with this position
    logprobs = [float(log_prefix[i + 1] - log_prefix[i]) for i in range(n)]
    return ScoreResult.from_logprobs(logprobs, text, min(pruned, 1.0), _passes(ens, sessions))


def _walk_round(ens: Scorable, sessions, data: bytes, j: int, key: tuple, log_alpha: float,
                states: list[dict[tuple, float]], log_prefix: np.ndarray) -> None:
    """One round opened at byte j in state `key`, forced to follow data: add its END and prefix mass."""
    pending = split_complete(data[:j])[1]
    for session, ids in zip(sessions, key):
        if ids is not None and not session.ids.fits(ids):
            raise _too_long(ens, sessions, j)
    node = open_round(sessions, key, pending, ens.combine, ens.weights)  # the members' passes run together
    log_round = log_alpha
    for i in range(j, len(data)):
        dist = node.distribution()
        if dist is None:
            return
        if dist[END] > 0:  # never at the round's start
            following = _state_after(sessions, key, node, data[:j], data[j:i])
            states[i][following] = np.logaddexp(states[i].get(following, -math.inf), log_round + math.log(dist[END]))
        byte = data[i]
        if not dist[byte] > 0:
            return
        log_round += math.log(dist[byte])
        log_prefix[i + 1] = np.logaddexp(log_prefix[i + 1], log_round)
        node = node.advance(byte)


def _state_after(sessions, key: tuple, node: EnsembleRound, origin: bytes, written: bytes) -> tuple:
    """Each member's ids once the round ends here, as generation records them (TokenTrack.follow, session.ids)."""
    out = []
    for session, ids, token in zip(sessions, key, ending_tokens(node)):
        following = None if session is None else session.ids.continued_ids(ids, origin, written, token)
        out.append(None if following is None else tuple(following))
    return tuple(out)
