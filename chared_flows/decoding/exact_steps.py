"""Exact mode's generation driver: a step is one unit (decoder.py describes the modes).

Every member keeps a beam of tokenizations (exact.py); there are no rounds. Greedy
looks ahead over how the members' current tokens end, and a unit that ends a token
commits the members to that end (ExactSource.ending), so runs of a repeatable
character are judged as runs, not one character at a time.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from chared_flows.decoding.config import DecodeConfig
from chared_flows.decoding.exact import ExactBeam, ExactSource
from chared_flows.decoding.index import END, EOS
from chared_flows.decoding.members import MemberSession
from chared_flows.decoding.output import Output
from chared_flows.decoding.rounds import EnsembleRound
from chared_flows.decoding.search import Unit


class ExactSteps:
    """Units written from the members' beams, each summed over its tokenizations."""

    def __init__(self, ens: Any, sessions: Sequence[MemberSession | None], config: DecodeConfig,
                 output: Output, stats: Any, pick: Callable[..., Unit | None]):
        self.ens, self.sessions, self.config = ens, list(sessions), config
        self.output, self.stats, self.pick = output, stats, pick
        self.source: ExactSource | None = None
        self._opened: list[tuple[ExactSource, int]] = []  # greedy: this step's lookaheads (source, offset)

    def step(self) -> Iterator[str]:
        """One unit in exact mode: every member's beam gives a distribution; no rounds."""
        out = self.output
        if self.source is None:  # built here, not in __init__: building reads the prompt's tail
            beams = [None if s is None else ExactBeam.start(s, self.config.beam_width, self.config.prune_threshold)
                     for s in self.sessions]
            self.source = ExactSource(beams, self.ens.combine, self.ens.weights)
        self._count_abstentions()
        if self.source.window_full:
            out.end("length")  # a path reached a member's context window
            return
        if self.config.greedy:
            self._opened = [(self.source, 0)]
            unit = self.pick(self.source.lookahead(origin=0), extend=self._next_lookahead)
        else:
            unit = self.pick(self.source)
        if unit is None:
            out.end("eos")
            return
        after = self._after_unit(unit) if self.config.greedy and unit.terminal == END else None
        for byte in unit.data:
            if after is None:
                self.source = self.source.advance(byte)
            yield from out.emit(byte)
            if out.finish is not None:
                return
        if after is not None:
            self.source = after
        if unit.terminal == EOS:
            out.end("eos")

    def rounds_written(self) -> list[bytes]:
        return [bytes(self.output.out)]  # no rounds: the whole text is one

    def beam_stats(self) -> Iterator[tuple[str, Any]]:
        """(member name, beam) for each member with a beam."""
        for name, beam in zip(self.ens.names, self.source.beams if self.source else []):
            if beam is not None:
                yield name, beam

    def _count_abstentions(self) -> None:
        for name, session, dist in zip(self.ens.names, self.sessions, self.source.member_distributions()):
            if dist is None and session is not None:
                self.stats.abstentions[name] = self.stats.abstentions.get(name, 0) + 1

    def _next_lookahead(self, node: EnsembleRound, data: bytes) -> EnsembleRound | None:
        """Greedy: the lookahead after a candidate unit that ends inside a character.

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
