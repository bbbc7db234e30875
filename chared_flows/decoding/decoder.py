"""The CharED loop: members decode one text together, one byte at a time.

A round = one forward pass per member on the text so far (each member
tokenizes it its own canonical way). Inside a round we grow the in-round
prefix `s` byte by byte: each member's candidates are its tokens that start
with `s`; its next-byte distribution, plus END (a token equal to `s`) and EOS
(only when `s` is empty), comes from the prefix index. The weighted mixture
picks one option; END closes the round, EOS ends the text.

mode="exact" (see exact.py) replaces rounds by one beam of tokenizations per
member: each member's next-byte distribution is summed over every
tokenization of the text so far, and members advance independently. Both
modes combine members with the ensemble's rule (combine.py).
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from chared_flows.decoding.combine import (
    RULE_FUNCTIONS,
    normalise_weights,
    validate_beam,
    validate_mode,
    validate_rule,
)
from chared_flows.decoding.healing import drop_forced, force_byte, heal_prompt
from chared_flows.decoding.exact import DEFAULT_BEAM_WIDTH, DEFAULT_PRUNE_THRESHOLD, ExactBeam
from chared_flows.decoding.index import END, EOS, option_distribution
from chared_flows.decoding.members import Member, MemberSession, RoundState
from chared_flows.decoding.sampling import choose, validate_decoding
from chared_flows.decoding.scoring import ScoreResult, score_chared, score_exact
from chared_flows.decoding.utf8 import split_complete
from chared_flows.errors import ConfigError

FINISH_REASONS = ("stop", "eos", "length")


@dataclass
class GenerationStats:
    wall_time_s: float = 0.0
    chars: int = 0
    bytes: int = 0
    rounds: int = 0
    steps: int = 0
    forward_passes: dict[str, int] = field(default_factory=dict)
    tokens_fed: dict[str, int] = field(default_factory=dict)
    prompt_tokens: dict[str, int] = field(default_factory=dict)
    output_tokens: dict[str, int] = field(default_factory=dict)
    abstentions: dict[str, int] = field(default_factory=dict)
    cache_rebuilds: dict[str, int] = field(default_factory=dict)
    pruned_mass: dict[str, float] = field(default_factory=dict)  # exact mode: mass pruned from each beam

    @property
    def total_forward_passes(self) -> int:
        return sum(self.forward_passes.values())

    @property
    def chars_per_s(self) -> float:
        return self.chars / self.wall_time_s if self.wall_time_s > 0 else 0.0


@dataclass
class GenerationResult:
    text: str
    finish_reason: str
    rounds: list[str]
    stats: GenerationStats


class Ensemble:
    """N >= 1 members with weights; decodes text character by character.

    A prompt is a str (raw text, or one user turn for members with chat=True)
    or a list of {"role", "content"} messages, which every member renders with
    its own chat template.

    mode: "chared" (the paper's rounds) or "exact" (beam over tokenizations).
    rule: "mixture", "product" or "adaptive" (combine.py), in both modes.
    beam_width / prune_threshold: exact mode's beam per member (paths kept at
    most, and the smallest share of the beam's mass a path may hold); chared
    scoring prunes round starts with the same threshold.
    token_healing (chared mode): back the prompt off to its last token
    boundary and make the first round(s) rewrite the removed bytes.
    """

    def __init__(
        self,
        members: Sequence[Member],
        weights: Sequence[float] | None = None,
        mode: str = "chared",
        rule: str = "mixture",
        beam_width: int = DEFAULT_BEAM_WIDTH,
        prune_threshold: float = DEFAULT_PRUNE_THRESHOLD,
        token_healing: bool = False,
    ):
        members = list(members)
        for i, m in enumerate(members):
            if not isinstance(m, Member):
                raise ConfigError(f"member {i} is a {type(m).__name__}; pass Member objects (Member.load(spec))")
        self.weights = normalise_weights(weights, len(members))
        self.members = members
        self.mode = validate_mode(mode)
        self.rule = validate_rule(rule)
        self.combine = RULE_FUNCTIONS[self.rule]
        self.beam_width, self.prune_threshold = validate_beam(beam_width, prune_threshold)
        self.token_healing = bool(token_healing)
        self.names = _unique_names([m.name for m in members])

    def describe(self) -> dict:
        return {
            "members": list(self.names),
            "families": [m.family for m in self.members],
            "chat": [m.chat for m in self.members],
            "weights": [float(w) for w in self.weights],
            "mode": self.mode,
            "rule": self.rule,
            "beam_width": self.beam_width,
            "prune_threshold": self.prune_threshold,
            "token_healing": self.token_healing,
        }

    def score(self, prompt, continuation: str) -> ScoreResult:
        """Log-probability of each byte of `continuation` after `prompt` under this ensemble.

        Exact mode: the byte's probability summed over all tokenizations (up to
        pruning). Chared mode: the probability that the chared procedure writes
        these bytes, summed over where its rounds could end (scoring.py).
        """
        if not isinstance(continuation, str):
            raise ConfigError(f"continuation is a {type(continuation).__name__}; pass a str")
        if self.mode == "exact":
            return score_exact(self, prompt, continuation)
        return score_chared(self, prompt, continuation)

    def generate(
        self,
        prompt: str,
        max_new_chars: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> GenerationResult:
        run = _Decoding(self, prompt, max_new_chars, temperature, top_p, seed, stop)
        for _ in run.chars():
            pass
        return run.result()

    def stream(
        self,
        prompt: str,
        max_new_chars: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> Iterator[str]:
        """Yield text as it is decided; text that may start a stop string is held back until it cannot."""
        return iter(self.start_stream(prompt, max_new_chars, temperature, top_p, seed, stop))

    def start_stream(
        self,
        prompt: str,
        max_new_chars: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> "StreamingGeneration":
        """Like stream(), but the returned object also holds `.result` once exhausted."""
        return StreamingGeneration(_Decoding(self, prompt, max_new_chars, temperature, top_p, seed, stop))


class StreamingGeneration:
    """Iterate for text chunks; afterwards `.result` is the full GenerationResult."""

    def __init__(self, run: "_Decoding"):
        self._run = run
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        run, sent = self._run, 0
        for _ in run.chars():
            safe = len(run.text) - _held_back(run.text, run.stop)
            if safe > sent:
                yield run.text[sent:safe]
                sent = safe
        if len(run.text) > sent:
            yield run.text[sent:]
        self.result = run.result()


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def _validate_stop(stop: Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    out = []
    for s in stop:
        if not isinstance(s, str) or not s:
            raise ConfigError(f"stop string {s!r} is invalid; stop strings must be non-empty str")
        out.append(s)
    return out


class _Decoding:
    """State of one generate/stream call: sessions, output bytes, stop and length bookkeeping."""

    def __init__(self, ens: Ensemble, prompt, max_new_chars, temperature, top_p, seed, stop):
        if not isinstance(prompt, (str, list, tuple)):
            raise ConfigError(f"prompt is a {type(prompt).__name__}; pass a str or a list of chat messages")
        validate_decoding(max_new_chars, temperature, top_p)
        self.ens = ens
        self.stop = _validate_stop(stop)
        self.max_new_chars = max_new_chars
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.rng = np.random.default_rng(seed)
        self.sessions: list[MemberSession | None] = []
        for member, weight in zip(ens.members, ens.weights):
            session = member.open_session(prompt, self.temperature)
            session.check_prompt_fits()
            # A zero-weight member cannot change any choice: skip its forward passes.
            self.sessions.append(session if weight > 0 else None)
        # Token healing: bytes cut from the prompt that the first round(s) must write again.
        self.forced = heal_prompt([s for s in self.sessions if s]) if ens.token_healing and ens.mode == "chared" else b""
        self.beams: list[ExactBeam | None] | None = None
        self.out = bytearray()
        self.text = ""
        self.round_bytes: list[bytes] = []
        self.finish: str | None = None
        self.stats = GenerationStats()
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._started = time.perf_counter()

    def chars(self) -> Iterator[str]:
        """Run rounds until finished, yielding each character as it completes."""
        step = self._exact_step if self.ens.mode == "exact" else self._round
        while self.finish is None:
            yield from step()
        self.stats.wall_time_s = time.perf_counter() - self._started

    def _round(self) -> Iterator[str]:
        states = self._open_round()
        if self.finish is not None:
            return
        indexes = [m.assets.index for m in self.ens.members]
        ranges: list[tuple[int, int] | None] = [
            (0, len(idx)) if st is not None else None for idx, st in zip(indexes, states)
        ]
        added = bytearray()
        self.stats.rounds += 1
        while True:
            conditionals, splits = [], []
            for k, st in enumerate(states):
                split = None if ranges[k] is None else indexes[k].split(st.sorted_probs, *ranges[k], len(added))
                splits.append(split)
                conditionals.append(None if split is None else option_distribution(split.masses, st.eos_mass if not added else 0.0))
            combined = self.ens.combine(conditionals, self.ens.weights)
            self.stats.steps += 1
            if len(self.out) < len(self.forced):
                combined = force_byte(combined, self.forced[len(self.out)], allow_end=bool(added))
            if combined.size == 0 or not combined.sum() > 0:
                # Dead end (no member can continue): drop any half character, end the text.
                self._finish("eos")
                break
            option = choose(combined, self.temperature, self.top_p, self.rng)
            if option == EOS:
                self._finish("eos")
                break
            if option == END:
                break
            added.append(option)
            for k, split in enumerate(splits):
                lo_hi = None if split is None or split.masses[option] <= 0 else split.byte_range(option)
                ranges[k] = lo_hi
            yield from self._emit(option)
            if self.finish is not None:
                break
        if added:
            self.round_bytes.append(bytes(added))

    def _exact_step(self) -> Iterator[str]:
        """One byte in exact mode: every member's beam gives a distribution; no rounds."""
        if self.beams is None:  # built here, not in __init__: building consumes the prompt's tail
            self.beams = [None if s is None else ExactBeam(s, self.ens.beam_width, self.ens.prune_threshold)
                          for s in self.sessions]
        pending = split_complete(bytes(self.out))[1]
        dists = [None if b is None else b.distribution(pending) for b in self.beams]
        if any(b is not None and b.window_full for b in self.beams):
            self._finish("length")  # a path reached a member's context window
            return
        for name, beam, dist in zip(self.ens.names, self.beams, dists):
            if beam is not None and dist is None:
                self.stats.abstentions[name] = self.stats.abstentions.get(name, 0) + 1
        combined = self.ens.combine(dists, self.ens.weights)
        self.stats.steps += 1
        if combined.size == 0 or not combined.sum() > 0:
            self._finish("eos")
            return
        option = choose(combined, self.temperature, self.top_p, self.rng)
        if option == EOS:
            self._finish("eos")
            return
        for beam in self.beams:
            if beam is not None and beam.alive:
                beam.advance(option)
        yield from self._emit(option)

    def _open_round(self) -> list[RoundState | None]:
        """One forward pass per active member on the text so far."""
        pending = split_complete(bytes(self.out))[1]
        states: list[RoundState | None] = []
        for name, session in zip(self.ens.names, self.sessions):
            ids = None if session is None else session.token_ids(bytes(self.out))
            if session is not None and ids is None:
                self.stats.abstentions[name] = self.stats.abstentions.get(name, 0) + 1
            if ids is not None and not session.fits(ids):
                self._finish("length")  # a member's context window is full
                return []
            states.append(None if ids is None else session.round_state(ids, pending))
        return states

    def _emit(self, byte: int) -> Iterator[str]:
        self.out.append(byte)
        decoded = self._utf8.decode(bytes([byte]))
        if len(self.out) <= len(self.forced):
            return  # healed prompt bytes: written again, but they are prompt, not output
        for ch in decoded:
            self.text += ch
            self.stats.chars += 1
            # Check before yielding: a stream reads self.text when we yield.
            matched = next((s for s in self.stop if self.text.endswith(s)), None)
            if matched is not None:
                self.text = self.text[: -len(matched)]
                self._finish("stop")
            elif self.stats.chars >= self.max_new_chars:
                self._finish("length")
            yield ch

    def _finish(self, reason: str) -> None:
        if self.finish is None:
            self.finish = reason

    def result(self) -> GenerationResult:
        stats = self.stats
        stats.bytes = len(self.text.encode("utf-8"))
        final = bytes(self.out)
        round_bytes = self.round_bytes if self.ens.mode == "chared" else [final]
        for name, beam in zip(self.ens.names, self.beams or []):
            if beam is not None:
                stats.pruned_mass[name] = beam.pruned_mass
        for name, session in zip(self.ens.names, self.sessions):
            if session is None:
                continue
            stats.forward_passes[name] = session.runner.forward_passes
            stats.tokens_fed[name] = session.runner.tokens_fed
            stats.cache_rebuilds[name] = session.runner.cache_rebuilds
            stats.prompt_tokens[name] = session.prompt_tokens
            ids = session.token_ids(split_complete(final)[0])
            stats.output_tokens[name] = len(ids or []) - session.prompt_tokens
        rounds = _round_texts(drop_forced(round_bytes, len(self.forced)))
        return GenerationResult(self.text, self.finish or "length", rounds, stats)


def _round_texts(rounds: list[bytes]) -> list[str]:
    """Each round's text; a character split across rounds belongs to the round that completes it."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    return [decoder.decode(r) for r in rounds]
