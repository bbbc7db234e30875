"""Token healing for chared mode: back the prompt off to a natural boundary, then rewrite it.

A prompt that ends inside what a member would write as one token (" ", "\\n",
indentation, ": ", half a word) is tokenized canonically into a split the model
rarely saw: after a lone " " token SmolLM2 writes newlines, not " the". Healing
cuts the prompt's tail off every member's context and makes the first round(s)
write those bytes again (rounds.EnsembleRound's `forced` bytes), so each member
may cover them with the tokens it would have chosen, e.g. " the" or "\\n   ".
The rewritten bytes are prompt, not output: never yielded or counted.

Where to cut (all conditions together, the shortest such tail):
- it holds every member's last token (each member may re-choose it);
- it starts at a token boundary of *every* member, so what is left ends where
  each member's own tokenization ends a token (cutting inside a token would
  just move the unnatural split);
- it swallows the whitespace run before it: after "):\\n    " a cut of the
  indentation alone would leave a lone "\\n" token behind, the same trap again;
- whole characters, at most MAX_HEALED_BYTES, and something left before it.
If no tail meets them, nothing is cut (healing is best effort; exact mode reads the
prompt's tail through its beam and needs none).
"""

from __future__ import annotations

from typing import Sequence

from chared_flows.decoding.members import MemberSession

MAX_HEALED_BYTES = 48
MAX_HEALED_TOKENS = 12


def heal_prompt(sessions: Sequence[MemberSession]) -> bytes:
    """Cut the healing tail off every session's context; return the cut bytes (b"" if none)."""
    if not sessions:
        return b""
    texts = [s.ids.context_text.encode("utf-8") for s in sessions]
    boundaries = [{n_bytes for _, n_bytes in s.ids.tail_boundaries(MAX_HEALED_TOKENS)} for s in sessions]
    cut = _choose_cut(texts, boundaries)
    if not cut:
        return b""
    tail = texts[0][-cut:]
    for session in sessions:
        session.ids.context_text = session.ids.context_text[: -len(tail.decode("utf-8"))]
    return tail


def _choose_cut(texts: list[bytes], boundaries: list[set[int]]) -> int:
    """The healing tail's length in bytes (0: none); see the module docstring."""
    common = set.intersection(*boundaries)
    shortest_text = min(len(t) for t in texts)
    need = max((min((b for b in bs if b > 0), default=0) for bs in boundaries), default=0)
    if need == 0:
        return 0
    for cut in sorted(b for b in common if need <= b <= MAX_HEALED_BYTES and b < shortest_text):
        tail = texts[0][-cut:]
        if not all(t.endswith(tail) for t in texts) or not _whole_chars(tail):
            continue
        before = texts[0][-cut - 1: -cut]
        if before.isspace() and cut + 1 <= MAX_HEALED_BYTES:
            continue  # whitespace right before the cut: cut further back
        return cut
    return 0


def _whole_chars(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def drop_forced(rounds: list[bytes], n: int) -> list[bytes]:
    """Round byte strings without the first `n` (healed) bytes."""
    out = []
    for r in rounds:
        cut = min(n, len(r))
        n -= cut
        if r[cut:]:
            out.append(r[cut:])
    return out
