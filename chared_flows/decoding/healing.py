"""Token healing for chared mode: back the prompt off to a token boundary, then rewrite it.

A prompt ending in " appl" is canonically tokenized with a token " appl"
that the model would rarely choose itself, and the first round can only
continue *after* it (the prompt-boundary problem). Healing cuts the prompt's
last token off and constrains the first round(s) to write those bytes again,
so the model may pick " apples" in one token. The rewritten bytes are prompt,
not output: they are never yielded or counted.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from chared_flows.decoding.index import END
from chared_flows.decoding.members import MemberSession


def heal_prompt(sessions: Sequence[MemberSession]) -> bytes:
    """Cut the longest last token among the members off every member's context; return the cut bytes.

    Subtle: members with chat templates render different context texts, so
    the cut must be a suffix of every member's text; it must also be whole
    characters (the cut text and the prompt stay valid str). Otherwise nothing
    is cut.
    """
    texts = [s.context_text.encode("utf-8") for s in sessions]
    tails = sorted((s.anchor(1)[1] for s in sessions), key=len, reverse=True)
    for tail in tails:
        if tail and all(t.endswith(tail) and len(t) > len(tail) for t in texts) and _whole_chars(tail):
            for session in sessions:
                session.context_text = session.context_text[: -len(tail.decode("utf-8"))]
            return tail
    return b""


def _whole_chars(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def force_byte(combined: np.ndarray, byte: int, allow_end: bool) -> np.ndarray:
    """Keep only the forced byte (and END when the round may close here).

    If the members give the forced byte no mass and END is not allowed, the
    byte is still written (probability 1): the prompt says so.
    """
    if combined.size == 0:
        combined = np.zeros(END + 2)
    out = np.zeros_like(combined)
    out[byte] = combined[byte]
    if allow_end:
        out[END] = combined[END]
    if not out.sum() > 0:
        out[byte] = 1.0
    return out


def drop_forced(rounds: list[bytes], n: int) -> list[bytes]:
    """Round byte strings without the first `n` (healed) bytes."""
    out = []
    for r in rounds:
        cut = min(n, len(r))
        n -= cut
        if r[cut:]:
            out.append(r[cut:])
    return out
