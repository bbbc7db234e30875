"""One generate/stream call: its sessions, its driver (chared or exact steps), its output and stats."""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from chared_flows.decoding.backends.scheduler import Client
from chared_flows.decoding.backends.scheduler import bound as bound_client
from chared_flows.decoding.cancel import current_token
from chared_flows.decoding.chared_steps import CharedSteps
from chared_flows.decoding.config import DecodeConfig
from chared_flows.decoding.driver import open_sessions
from chared_flows.decoding.exact_steps import ExactSteps
from chared_flows.decoding.healing import drop_forced, heal_prompt
from chared_flows.decoding.output import Output
from chared_flows.decoding.search import SearchStats, Unit, best_unit, sample_unit, whole_characters
from chared_flows.decoding.text import check_prompt
from chared_flows.decoding.utf8 import split_complete

FINISH_REASONS = ("stop", "eos", "length", "cancelled")


@dataclass
class GenerationStats:
    wall_time_s: float = 0.0
    chars: int = 0
    bytes: int = 0
    rounds: int = 0
    steps: int = 0  # units written (greedy) or options drawn (sampling)
    forward_passes: dict[str, int] = field(default_factory=dict)
    tokens_fed: dict[str, int] = field(default_factory=dict)
    prompt_tokens: dict[str, int] = field(default_factory=dict)
    output_tokens: dict[str, int] = field(default_factory=dict)
    abstentions: dict[str, int] = field(default_factory=dict)
    cache_rebuilds: dict[str, int] = field(default_factory=dict)
    pruned_mass: dict[str, float] = field(default_factory=dict)  # exact mode: mass pruned from each beam
    search_expansions: int = 0  # byte-tree nodes opened by greedy / top-p searches
    search_capped: int = 0  # searches that hit their cap (their result is then the best found, unproved)
    healed_bytes: int = 0  # prompt bytes the first rounds rewrote (token healing)
    search_rounds: int = 0  # rounds greedy search opened to finish a character a token left half written
    reseeds: dict[str, int] = field(default_factory=dict)  # exact mode: beams re-seeded after losing every path

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


class Generation:
    """State of one generate/stream call; `steps` is the mode's driver (chared_steps / exact_steps)."""

    def __init__(self, ens: Any, prompt: Any, config: DecodeConfig):
        check_prompt(prompt)
        self.ens = ens
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.sessions = open_sessions(ens.members, ens.weights, prompt, config.temperature)
        # Token healing: bytes cut from the prompt that the first round(s) must write again.
        healing = config.token_healing and config.mode == "chared"
        forced = heal_prompt([s for s in self.sessions if s]) if healing else b""
        self.output = Output(config.stop, config.max_new_chars, forced)
        self.stats = GenerationStats(healed_bytes=len(forced))
        self.search = SearchStats()
        drive = ExactSteps if config.mode == "exact" else CharedSteps
        self.steps = drive(ens, self.sessions, config, self.output, self.stats, self.pick)
        self.client = Client(s.scheduler for s in self.sessions if s is not None)
        self.token = current_token()
        self._started = time.perf_counter()

    @property
    def text(self) -> str:
        return self.output.text

    @property
    def finish(self) -> str | None:
        return self.output.finish

    def chars(self, registered: bool = False) -> Iterator[str]:
        """Run until finished, yielding each character as it completes.

        Each step runs as this decoding's scheduler client (its passes batch with other
        decodings'). Subtle: the binding is taken per step and released before the step's
        characters are yielded, so a stream its caller leaves suspended (or steps from
        another thread) never holds the schedulers up. `registered=True` (a caller that
        drains the whole generator in one thread, and registered the client itself) keeps
        the schedulers waiting for it between steps too, which is what lockstep batching needs.
        """
        try:
            while self.output.finish is None:
                if self.token is not None and self.token.cancelled:
                    self.cancel()
                    break
                with bound_client(self.client):
                    decided = list(self.steps.step())
                self.stats.chars = self.output.chars  # live, for a caller reading stats mid-stream
                yield from decided
        finally:
            if registered:
                self.client.unregister()
        self.stats.wall_time_s = time.perf_counter() - self._started

    def drain(self) -> GenerationResult:
        """Run to the end in this thread (registered throughout) and return the result."""
        self.client.register()
        for _ in self.chars(registered=True):
            pass
        return self.result()

    def pick(self, source, extend=None, may_end=whole_characters) -> Unit | None:
        """The next unit: the most probable (greedy) or a draw (sampling)."""
        self.stats.steps += 1
        if self.config.greedy:
            return best_unit(source, self.search, extend=extend, may_end=may_end)
        return sample_unit(source, self.config.top_p, self.rng, self.search)

    def cancel(self) -> None:
        """Stop at the next character (another decoding of the same batch failed)."""
        self.output.end("cancelled")

    def result(self) -> GenerationResult:
        stats, output = self.stats, self.output
        stats.chars = output.chars
        stats.bytes = len(output.text.encode("utf-8"))
        stats.search_expansions = self.search.expansions
        stats.search_capped = self.search.capped
        if isinstance(self.steps, ExactSteps):
            for name, beam in self.steps.beam_stats():
                stats.pruned_mass[name] = beam.pruned_mass
                if beam.reseeds:
                    stats.reseeds[name] = beam.reseeds
        self._count_passes(bytes(output.out))
        rounds = round_texts(drop_forced(self.steps.rounds_written(), len(output.forced)))
        return GenerationResult(output.text, output.finish or "length", rounds, stats)

    def _count_passes(self, final: bytes) -> None:
        stats = self.stats
        for name, session in zip(self.ens.names, self.sessions):
            if session is None:
                continue
            counts = session.pass_counts()
            stats.forward_passes[name] = counts.forward_passes
            stats.tokens_fed[name] = counts.tokens_fed
            stats.cache_rebuilds[name] = counts.cache_rebuilds
            stats.prompt_tokens[name] = session.prompt_tokens
            ids = session.ids.token_ids(split_complete(final)[0])
            stats.output_tokens[name] = len(ids or []) - session.prompt_tokens


class StreamingGeneration:
    """Iterate for text chunks; afterwards `.result` is the full GenerationResult."""

    def __init__(self, run: Generation, registered: bool = False):
        self._run = run
        self._registered = registered
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        run, sent = self._run, 0
        for _ in run.chars(registered=self._registered):
            safe = run.output.safe_length()
            if safe > sent:
                yield run.text[sent:safe]
                sent = safe
        if len(run.text) > sent:
            yield run.text[sent:]
        self.result = run.result()


def round_texts(rounds: list[bytes]) -> list[str]:
    """Each round's text; a character split across rounds belongs to the round that completes it."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    return [decoder.decode(r) for r in rounds]
