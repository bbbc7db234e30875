"""Chared mode's generation driver: a step is one round (decoder.py describes the modes).

A round opens with one pass per active member on the text so far (driver.open_round);
greedy writes the round's most probable unit, sampling draws units until the round
ends (END) or the text does (EOS). Members whose token ended the round continue from
it (driver.ending_tokens, TokenTrack.follow).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from chared_flows.decoding.config import DecodeConfig
from chared_flows.decoding.driver import ending_tokens, open_round
from chared_flows.decoding.index import END, EOS
from chared_flows.decoding.members import MemberSession
from chared_flows.decoding.output import Output
from chared_flows.decoding.rounds import EnsembleRound
from chared_flows.decoding.search import Unit
from chared_flows.decoding.utf8 import split_complete


class CharedSteps:
    """Rounds over the members' canonical (or own) tokenizations of the text so far."""

    def __init__(self, ens: Any, sessions: Sequence[MemberSession | None], config: DecodeConfig,
                 output: Output, stats: Any, pick: Callable[..., Unit | None]):
        self.ens, self.sessions, self.config = ens, list(sessions), config
        self.output, self.stats, self.pick = output, stats, pick
        self.round_bytes: list[bytes] = []  # what each round wrote (GenerationResult.rounds)

    def step(self) -> Iterator[str]:
        """One round: its units written, its characters yielded as they complete."""
        out = self.output
        source = self._round_at(bytes(out.out), count=True)
        if out.finish is not None:
            return
        units = [self.pick(source, extend=self._next_round)] if self.config.greedy else self._sampled_round(source)
        added = bytearray()
        for unit in units:
            if unit is None:  # dead end (no member can continue): drop any half character, end the text
                out.end("eos")
                break
            added += unit.data
            if unit.terminal == END:
                self._follow(unit.source, bytes(out.out) + unit.data, keep_only=True)
            yield from out.emit_all(unit.data)
            if unit.terminal == EOS:
                out.end("eos")
            if unit.terminal is not None or out.finish is not None:
                break
        if added:
            self.round_bytes.append(bytes(added))

    def rounds_written(self) -> list[bytes]:
        return self.round_bytes

    def _sampled_round(self, source: EnsembleRound) -> Iterator[Unit | None]:
        """Draw units until the round ends (END/EOS) or nothing can be drawn."""
        while True:
            unit = self.pick(source)
            yield unit
            if unit is None or unit.terminal is not None:
                return
            source = unit.source

    def _next_round(self, node: EnsembleRound, data: bytes) -> EnsembleRound | None:
        """The round after a candidate unit that ends inside a character (greedy search only)."""
        self.stats.search_rounds += 1
        self._follow(node, bytes(self.output.out) + data, keep_only=False)
        return self._round_at(bytes(self.output.out) + data, count=False)

    def _follow(self, node: EnsembleRound, out: bytes, keep_only: bool) -> None:
        """Members whose token ended the round continue from it (TokenTrack.follow, session.ids)."""
        for session, token in zip(self.sessions, ending_tokens(node)):
            if session is None:
                continue
            session.ids.follow(node.origin, out[len(node.origin):], token)
            if keep_only:
                session.ids.keep_only(out)

    def _round_at(self, out: bytes, count: bool) -> EnsembleRound | None:
        """One forward pass per active member on prompt + `out`; None if a context window is full."""
        ids = []
        for name, session in zip(self.ens.names, self.sessions):
            member_ids = None if session is None else session.ids.token_ids(out)
            if session is not None and member_ids is None and count:
                self.stats.abstentions[name] = self.stats.abstentions.get(name, 0) + 1
            if member_ids is not None and not session.ids.fits(member_ids):
                if count:
                    self.output.end("length")  # a member's context window is full
                return None
            ids.append(member_ids)
        if count:
            self.stats.rounds += 1
        return open_round(self.sessions, ids, split_complete(out)[1], self.ens.combine, self.ens.weights,
                          self.output.forced[len(out):], origin=out)
