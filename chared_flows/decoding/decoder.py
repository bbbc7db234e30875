"""The CharED loop: members decode one text together.

mode="chared" (the paper): a round is one forward pass per member on the text so
far, each member tokenizing it its own canonical way; inside the round the
members' next-byte distributions (rounds.py) are combined by the ensemble's rule
and the round writes bytes until END (a token ends) or EOS.

mode="exact" (exact.py): each member keeps a beam of tokenizations and its
next-byte distribution is summed over them; there are no rounds.

What is written (search.py): greedy writes the most probable *unit* (in chared
mode the round's most probable string; in exact mode the most probable way the
members' current tokens end); sampling draws one byte at a time (exact by the
chain rule), or whole characters from the nucleus when top_p < 1.
"""

from __future__ import annotations

import codecs
import contextlib
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from chared_flows.decoding.combine import RULE_FUNCTIONS, normalise_weights
from chared_flows.decoding.config import DecodeConfig
from chared_flows.decoding.exact import ExactBeam, ExactSource
from chared_flows.decoding.healing import drop_forced, heal_prompt
from chared_flows.decoding.text import check_prompt, check_text
from chared_flows.decoding.index import END, EOS
from chared_flows.decoding.members import Member, MemberSession
from chared_flows.decoding.rounds import EnsembleRound, MemberRound
from chared_flows.decoding.backends.scheduler import Client
from chared_flows.decoding.backends.scheduler import bound as bound_client
from chared_flows.decoding.backends.scheduler import gather
from chared_flows.decoding.scoring import ScoreResult, score_chared, score_exact
from chared_flows.decoding.search import (
    SearchStats,
    Unit,
    best_unit,
    sample_unit,
    whole_characters,
)
from chared_flows.decoding.utf8 import split_complete
from chared_flows.errors import ConfigError

FINISH_REASONS = ("stop", "eos", "length", "cancelled")
DEFAULT_BATCH_SIZE = 8  # concurrent decodings of generate_batch (a batched forward of 8 costs ~0.2-0.3x per sequence)


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


class Ensemble:
    """N >= 1 members decoding one text together, under one DecodeConfig.

    A prompt is a str (raw text, or one user turn for members with chat=True)
    or a list of {"role", "content"} messages, which every member renders with
    its own chat template.

    `Ensemble(members, config)` or `Ensemble(members, weights=..., mode=...)`:
    keyword arguments are DecodeConfig fields (config.py) and override `config`.
    Per call, `generate(prompt, max_new_chars=..., temperature=...)` overrides again.
    """

    def __init__(self, members: Sequence[Member], config: DecodeConfig | None = None, **overrides: Any):
        members = list(members)
        for i, m in enumerate(members):
            if not isinstance(m, Member):
                raise ConfigError(f"member {i} is a {type(m).__name__}; pass Member objects (Member.load(spec))")
        base = config if config is not None else DecodeConfig()
        if not isinstance(base, DecodeConfig):
            raise ConfigError(f"config is a {type(base).__name__}; pass a DecodeConfig")
        self.config = base.replace(**overrides)
        self.weights = normalise_weights(self.config.weights, len(members))
        self.members = members
        self.combine = RULE_FUNCTIONS[self.config.rule]
        self.names = _unique_names([m.name for m in members])

    # Read-only views of the config, for callers of the earlier API.
    mode = property(lambda self: self.config.mode)
    rule = property(lambda self: self.config.rule)
    beam_width = property(lambda self: self.config.beam_width)
    prune_threshold = property(lambda self: self.config.prune_threshold)
    token_healing = property(lambda self: self.config.token_healing)

    def score(self, prompt, continuation: str) -> ScoreResult:
        """Log-probability of each byte of `continuation` after `prompt` under this ensemble.

        Exact mode: the byte's probability summed over all tokenizations (up to
        pruning). Chared mode: the probability that the chared procedure writes
        these bytes, summed over where its rounds could end (scoring.py).
        """
        check_text(continuation, "continuation")
        if not continuation:
            # 0 bits over 0 characters has no rate: NaN would poison every mean it joins
            raise ConfigError("continuation is empty; score at least one character (bits per char of nothing is undefined)")
        check_prompt(prompt)
        if self.config.mode == "exact":
            return score_exact(self, prompt, continuation)
        return score_chared(self, prompt, continuation)

    def generate(self, prompt, config: DecodeConfig | None = None, **overrides: Any) -> GenerationResult:
        return _Decoding(self, prompt, self._call_config(config, overrides)).drain()

    def stream(self, prompt, config: DecodeConfig | None = None, **overrides: Any) -> Iterator[str]:
        """Yield text as it is decided; text that may start a stop string is held back until it cannot."""
        return iter(self.start_stream(prompt, config, **overrides))

    def start_stream(self, prompt, config: DecodeConfig | None = None, **overrides: Any) -> "StreamingGeneration":
        """Like stream(), but the returned object also holds `.result` once exhausted."""
        return StreamingGeneration(_Decoding(self, prompt, self._call_config(config, overrides)))

    def generate_batch(
        self, prompts: Sequence[Any], config: DecodeConfig | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
        **overrides: Any,
    ) -> list[GenerationResult]:
        """Decode many prompts at once; results in the order of `prompts`.

        Up to `batch_size` decodings run concurrently, each in its own thread; their
        forward passes meet in the members' schedulers and run as one batched forward
        per member per step (scheduler.py). Each decoding is exactly the one `generate`
        would run (its own sessions, caches and random generator), so outputs equal
        unbatched decoding up to the float rounding of a batched matrix product.
        """
        return [result for _, result in sorted(self._run_many(prompts, config, batch_size, overrides, stream=False))]

    def stream_batch(
        self, prompts: Sequence[Any], config: DecodeConfig | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
        **overrides: Any,
    ) -> Iterator[tuple[int, str]]:
        """Like generate_batch, but yield (prompt index, text chunk) as each decoding decides text."""
        for index, chunk in self._run_many(prompts, config, batch_size, overrides, stream=True):
            if chunk:
                yield index, chunk

    def _run_many(self, prompts, config, batch_size: int, overrides: dict, stream: bool) -> Iterator[tuple[int, Any]]:
        if isinstance(prompts, str):
            raise ConfigError("generate_batch takes a list of prompts; for one prompt use generate()")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size is {batch_size!r}; it must be an integer >= 1")
        call = self._call_config(config, overrides)
        runs = [_Decoding(self, prompt, call) for prompt in prompts]  # every prompt checked before any decoding
        yield from run_concurrently(runs, batch_size, stream)

    def _call_config(self, config: DecodeConfig | None, overrides: dict[str, Any]) -> DecodeConfig:
        if "stop" in overrides and overrides["stop"] is None:
            overrides["stop"] = ()
        call = (config or self.config).replace(**overrides)
        if call.ensemble_fields() != self.config.ensemble_fields():
            changed = sorted(k for k, v in call.ensemble_fields().items() if self.config.ensemble_fields()[k] != v)
            raise ConfigError(
                f"{', '.join(changed)} describe the ensemble, not one call; build an Ensemble with them instead"
            )
        return call


class CancelToken:
    """Stops the decodings started under it (see `cancellable`) at their next step."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


_cancel_scope = threading.local()


@contextlib.contextmanager
def cancellable(token: CancelToken) -> Iterator[CancelToken]:
    """Decodings started in this thread while inside stop once `token.cancel()` is called.

    A caller running decodings in worker threads (the workflow runner) enters it in each
    worker, so an interrupted run does not wait for every generation in flight to finish.
    A cancelled generation ends with finish_reason "cancelled".
    """
    previous = getattr(_cancel_scope, "token", None)
    _cancel_scope.token = token
    try:
        yield token
    finally:
        _cancel_scope.token = previous


def cancel_requested() -> bool:
    """Whether the calling thread runs under a CancelToken that was cancelled."""
    token = getattr(_cancel_scope, "token", None)
    return token is not None and token.cancelled


class StreamingGeneration:
    """Iterate for text chunks; afterwards `.result` is the full GenerationResult."""

    def __init__(self, run: "_Decoding", registered: bool = False):
        self._run = run
        self._registered = registered
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        run, sent = self._run, 0
        for _ in run.chars(registered=self._registered):
            safe = len(run.text) - _held_back(run.text, run.stop)
            if safe > sent:
                yield run.text[sent:safe]
                sent = safe
        if len(run.text) > sent:
            yield run.text[sent:]
        self.result = run.result()


def run_concurrently(runs: list["_Decoding"], workers: int, stream: bool) -> Iterator[tuple[int, Any]]:
    """Run decodings in threads; yield (index, chunk) while streaming, else (index, result) as each ends.

    An error in one decoding is raised here once the others have stopped (none is lost
    silently, none keeps running unattended); a caller that stops iterating cancels them.
    """
    events: queue.Queue = queue.Queue()
    done = object()
    workers = min(workers, max(1, len(runs)))

    begun: set[int] = set()

    def work(index: int, run: "_Decoding") -> None:
        begun.add(index)
        if index >= workers:
            run.client.register()  # its turn came: another run just ended
        try:
            if stream:
                streaming = StreamingGeneration(run, registered=True)
                for chunk in streaming:
                    events.put((index, chunk))
            else:
                for _ in run.chars(registered=True):
                    pass
                events.put((index, run.result()))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            events.put((index, exc))
        finally:
            events.put((index, done))

    # The first `workers` register before any starts: a scheduler must not run a batch of
    # the first few alone.
    for run in runs[:workers]:
        run.client.register()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chared-decode")
    finished, failure = 0, None
    try:
        for index, run in enumerate(runs):
            pool.submit(work, index, run)
        while finished < len(runs):
            index, item = events.get()
            if item is done:
                finished += 1
            elif isinstance(item, BaseException):
                failure = failure or item
                for other in runs:
                    other.cancel()
            elif failure is None:
                yield index, item
    finally:
        if finished < len(runs):  # the caller stopped early, or an error: stop the rest
            for run in runs:
                run.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        for index, run in enumerate(runs[:workers]):
            if index not in begun:
                run.client.unregister()  # registered up front, never started
    if failure is not None:
        raise failure


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


class _Decoding:
    """State of one generate/stream call: sessions, output bytes, stop and length bookkeeping."""

    def __init__(self, ens: Ensemble, prompt, config: DecodeConfig):
        check_prompt(prompt)
        self.ens = ens
        self.config = config
        self.stop = list(config.stop)
        self.rng = np.random.default_rng(config.seed)
        self.sessions: list[MemberSession | None] = []
        for member, weight in zip(ens.members, ens.weights):
            session = member.open_session(prompt, config.temperature)
            session.check_prompt_fits()
            # A zero-weight member cannot change any choice: skip its forward passes.
            self.sessions.append(session if weight > 0 else None)
        # Token healing: bytes cut from the prompt that the first round(s) must write again.
        healing = config.token_healing and config.mode == "chared"
        self.forced = heal_prompt([s for s in self.sessions if s]) if healing else b""
        self.exact: ExactSource | None = None
        self._opened: list[tuple[ExactSource, int]] = []  # exact greedy: a step's lookaheads (source, offset)
        self.out = bytearray()
        self.text = ""
        self.round_bytes: list[bytes] = []
        self.finish: str | None = None
        self.stats = GenerationStats(healed_bytes=len(self.forced))
        self.search = SearchStats()
        self.client = Client(s.scheduler for s in self.sessions if s is not None)
        self.token: CancelToken | None = getattr(_cancel_scope, "token", None)
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._started = time.perf_counter()

    def chars(self, registered: bool = False) -> Iterator[str]:
        """Run until finished, yielding each character as it completes.

        Each step runs as this decoding's scheduler client (its passes batch with other
        decodings'). Subtle: the binding is taken per step and released before the step's
        characters are yielded, so a stream its caller leaves suspended (or steps from
        another thread) never holds the schedulers up. `registered=True` (a caller that
        drains the whole generator in one thread, and registered the client itself) keeps
        the schedulers waiting for it between steps too, which is what lockstep batching needs.
        """
        step = self._exact_step if self.ens.mode == "exact" else self._round
        try:
            while self.finish is None:
                if self.token is not None and self.token.cancelled:
                    self.cancel()
                    break
                with bound_client(self.client):
                    decided = list(step())
                yield from decided
        finally:
            if registered:
                self.client.unregister()
        self.stats.wall_time_s = time.perf_counter() - self._started

    def drain(self) -> "GenerationResult":
        """Run to the end in this thread (registered throughout) and return the result."""
        self.client.register()
        for _ in self.chars(registered=True):
            pass
        return self.result()

    # --- chared mode ----------------------------------------------------------

    def _round(self) -> Iterator[str]:
        source = self._round_at(bytes(self.out), count=True)
        if self.finish is not None:
            return
        if self.config.greedy:
            units = [self._pick(source, extend=self._next_round)]
        else:
            units = self._sampled_round(source)
        added = bytearray()
        for unit in units:
            if unit is None:  # dead end (no member can continue): drop any half character, end the text
                self._finish("eos")
                break
            added += unit.data
            if unit.terminal == END:
                self._follow(unit.source, bytes(self.out) + unit.data, keep_only=True)
            yield from self._emit_all(unit.data)
            if unit.terminal == EOS:
                self._finish("eos")
            if unit.terminal is not None or self.finish is not None:
                break
        if added:
            self.round_bytes.append(bytes(added))

    def _sampled_round(self, source: EnsembleRound) -> Iterator[Unit | None]:
        """Draw units until the round ends (END/EOS) or nothing can be drawn."""
        while True:
            unit = self._pick(source)
            yield unit
            if unit is None or unit.terminal is not None:
                return
            source = unit.source

    def _next_round(self, node: EnsembleRound, data: bytes) -> EnsembleRound | None:
        """The round after a candidate unit that ends inside a character (greedy search only)."""
        self.stats.search_rounds += 1
        self._follow(node, bytes(self.out) + data, keep_only=False)
        return self._round_at(bytes(self.out) + data, count=False)

    def _follow(self, node: EnsembleRound, out: bytes, keep_only: bool) -> None:
        """Members whose token ended the round continue from it (MemberSession.follow)."""
        alone = sum(m is not None for m in node.members) == 1
        for session, member in zip(self.sessions, node.members):
            if session is None:
                continue
            token = member.ending_token(alone) if member is not None else None
            session.follow(node.origin, out[len(node.origin):], token)
            if keep_only:
                session.keep_only(out)

    def _round_at(self, out: bytes, count: bool) -> EnsembleRound | None:
        """One forward pass per active member on prompt + `out`; None if a context window is full."""
        pending = split_complete(out)[1]
        requests: dict[int, tuple] = {}
        for k, (name, session) in enumerate(zip(self.ens.names, self.sessions)):
            ids = None if session is None else session.token_ids(out)
            if session is not None and ids is None and count:
                self.stats.abstentions[name] = self.stats.abstentions.get(name, 0) + 1
            if ids is not None and not session.fits(ids):
                if count:
                    self._finish("length")  # a member's context window is full
                return None
            if ids is not None:
                requests[k] = session.submit_round(ids, pending)
        # The members' passes run at the same time (one worker per member, scheduler.py).
        opened = dict(zip(requests, gather(requests.values())))
        members: list[MemberRound | None] = [opened.get(k) for k in range(len(self.sessions))]
        if count:
            self.stats.rounds += 1
        return EnsembleRound(members, self.ens.combine, self.ens.weights, pending, self.forced[len(out):], origin=out)

    # --- exact mode -------------------------------------------------------------

    def _exact_step(self) -> Iterator[str]:
        """One unit in exact mode: every member's beam gives a distribution; no rounds."""
        if self.exact is None:  # built here, not in __init__: building reads the prompt's tail
            beams = [None if s is None else ExactBeam.start(s, self.config.beam_width, self.config.prune_threshold)
                     for s in self.sessions]
            self.exact = ExactSource(beams, self.ens.combine, self.ens.weights)
        for name, dist in zip(self.ens.names, self.exact.member_distributions()):
            if dist is None and self.sessions[self.ens.names.index(name)] is not None:
                self.stats.abstentions[name] = self.stats.abstentions.get(name, 0) + 1
        if self.exact.window_full:
            self._finish("length")  # a path reached a member's context window
            return
        if self.config.greedy:
            self._opened = [(self.exact, 0)]
            unit = self._pick(self.exact.lookahead(origin=0), extend=self._next_lookahead)
        else:
            unit = self._pick(self.exact)
        if unit is None:
            self._finish("eos")
            return
        after = self._after_unit(unit) if self.config.greedy and unit.terminal == END else None
        for byte in unit.data:
            if after is None:
                self.exact = self.exact.advance(byte)
            yield from self._emit(byte)
            if self.finish is not None:
                return
        if after is not None:
            self.exact = after
        if unit.terminal == EOS:
            self._finish("eos")

    def _next_lookahead(self, node: EnsembleRound, data: bytes) -> EnsembleRound | None:
        """Exact greedy: the lookahead after a candidate unit that ends inside a character.

        It opens where the candidate's tokens ended (ExactSource.ending), as the step will
        if the candidate wins. `origin` numbers the lookaheads opened in this step, so a
        unit that crossed several can be replayed (_after_unit).
        """
        base, offset = self._opened[node.origin]
        source = base.ending(data[offset:])
        if source.window_full:
            return None
        self._opened.append((source, len(data)))
        return source.lookahead(origin=len(self._opened) - 1)

    def _after_unit(self, unit: Unit) -> ExactSource:
        """The source after a greedy unit that ended in END: its members committed to their token ends."""
        base, offset = self._opened[unit.source.origin]
        return base.ending(unit.data[offset:])

    # --- shared -----------------------------------------------------------------

    def _pick(self, source, extend=None, may_end=whole_characters) -> Unit | None:
        self.stats.steps += 1
        if self.config.greedy:
            return best_unit(source, self.search, extend=extend, may_end=may_end)
        return sample_unit(source, self.config.top_p, self.rng, self.search)

    def _emit_all(self, data: bytes) -> Iterator[str]:
        for byte in data:
            yield from self._emit(byte)
            if self.finish is not None:
                return

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
            elif self.stats.chars >= self.config.max_new_chars:
                self._finish("length")
            yield ch

    def _finish(self, reason: str) -> None:
        if self.finish is None:
            self.finish = reason

    def cancel(self) -> None:
        """Stop at the next character (another decoding of the same batch failed)."""
        self._finish("cancelled")

    def result(self) -> GenerationResult:
        stats = self.stats
        stats.bytes = len(self.text.encode("utf-8"))
        stats.search_expansions = self.search.expansions
        stats.search_capped = self.search.capped
        final = bytes(self.out)
        round_bytes = self.round_bytes if self.ens.mode == "chared" else [final]
        for name, beam in zip(self.ens.names, self.exact.beams if self.exact else []):
            if beam is not None:
                stats.pruned_mass[name] = beam.pruned_mass
                if beam.reseeds:
                    stats.reseeds[name] = beam.reseeds
        for name, session in zip(self.ens.names, self.sessions):
            if session is None:
                continue
            counts = session.pass_counts()
            stats.forward_passes[name] = counts.forward_passes
            stats.tokens_fed[name] = counts.tokens_fed
            stats.cache_rebuilds[name] = counts.cache_rebuilds
            stats.prompt_tokens[name] = session.prompt_tokens
            ids = session.token_ids(split_complete(final)[0])
            stats.output_tokens[name] = len(ids or []) - session.prompt_tokens
        rounds = _round_texts(drop_forced(round_bytes, len(self.forced)))
        return GenerationResult(self.text, self.finish or "length", rounds, stats)


def _round_texts(rounds: list[bytes]) -> list[str]:
    """Each round's text; a character split across rounds belongs to the round that completes it."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    return [decoder.decode(r) for r in rounds]
