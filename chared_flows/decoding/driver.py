"""Opening sessions and rounds, and closing rounds: one driver for generation and scoring.

Generation (generation.py) and chared scoring (scoring.py) walk the same rounds:
a round opens with one pass per active member, all submitted before any is awaited
(so the members run at once and batch with other decodings, scheduler.py), and when
a round ends each member continues from its own token if it ended the round itself.
Subtle: scoring must close a round exactly as generation does, or its probabilities
are of a procedure generation does not run; both go through `ending_tokens`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from chared_flows.decoding.backends.scheduler import gather
from chared_flows.decoding.members import Member, MemberSession
from chared_flows.decoding.rounds import EnsembleRound, Rule

MemberIds = Sequence["Sequence[int] | None"]  # one entry per member; None: it sits this round out


def open_sessions(members: Sequence[Member], weights: np.ndarray, prompt: Any,
                  temperature: float = 1.0) -> list[MemberSession | None]:
    """One session per member on `prompt` (each checked to fit its window); None for weight 0.

    A zero-weight member cannot change any choice, so it runs no forward passes.
    """
    sessions: list[MemberSession | None] = []
    for member, weight in zip(members, weights):
        session = member.open_session(prompt, temperature)
        session.ids.check_prompt_fits()
        sessions.append(session if weight > 0 else None)
    return sessions


def open_round(sessions: Sequence[MemberSession | None], ids: MemberIds, pending: bytes, rule: Rule,
               weights: np.ndarray, forced: bytes = b"", origin: bytes = b"") -> EnsembleRound:
    """The round after each member's `ids`: every member's pass submitted, then all awaited together."""
    requests = {k: session.submit_round(member_ids, pending)
                for k, (session, member_ids) in enumerate(zip(sessions, ids))
                if session is not None and member_ids is not None}
    opened = dict(zip(requests, gather(requests.values())))
    members = [opened.get(k) for k in range(len(sessions))]
    return EnsembleRound(members, rule, weights, pending, forced, origin=origin)


def ending_tokens(node: EnsembleRound) -> list[int | None]:
    """Each member's own token that ends the round at `node`, or None where it would not end it here.

    A member alone in the ensemble ends the round by its own choice, so its token counts
    whatever the other options' mass (MemberRound.ending_token).
    """
    alone = sum(m is not None for m in node.members) == 1
    return [None if m is None else m.ending_token(alone) for m in node.members]
