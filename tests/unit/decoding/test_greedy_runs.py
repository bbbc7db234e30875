"""Exact greedy on runs of repeatable characters (`*`, `-`, `=`, `#`, `0`, spaces, tabs).

A vocabulary holds runs of each in lengths 1 to 16 (as real ones do) and fake models put
much of their mass on them (tests/fixtures/tiny.py: RunsRunner). Greedy's unit in exact
mode is "how the current token ends"; paths still inside a longer run token used to make
"one more character" the best token end step after step (runs of 16-40 characters where
the model's own greedy wrote two). Committed to the token end it chose, one member at
weight 1 writes exactly its own token greedy text here, and an ensemble in exact mode is
no more degenerate than in chared mode.
"""

from __future__ import annotations

import re

import pytest
import torch

from chared_flows.decoding import Ensemble, Member
from tests.fixtures.tiny import RUN_CHARS, runs_member

CHARS = 40
PROMPTS = ("Title\n", "x = ")  # after a line (banners, rules, headings), after an assignment (0-padding)


def token_greedy(member: Member, prompt: str, chars: int) -> str:
    """The member's own greedy decoding, token by token, on the canonical prompt (plain loop)."""
    runner = member.assets.backend.new_runner()
    vocab = member.assets.vocab
    ids, out = member.encode(prompt), b""
    while len(out.decode("utf-8", "ignore")) < chars:
        token = int(torch.argmax(runner.next_logits(ids)))
        if token in vocab.eos_token_ids:
            break
        ids.append(token)
        out += vocab.tokens[token]
    return out.decode("utf-8")[:chars]


def longest_run(text: str) -> int:
    return max((len(m.group(0)) for m in re.finditer(r"(.)\1*", text, flags=re.S)), default=0)


@pytest.mark.parametrize("char", list(RUN_CHARS))
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("prompt", PROMPTS)
def test_one_member_exact_greedy_writes_its_own_token_greedy_text(char, seed, prompt):
    member = runs_member(prompt, char, seed)
    own = token_greedy(member, prompt, CHARS)
    text = Ensemble([member], mode="exact").generate(prompt, max_new_chars=CHARS).text
    assert text == own, (char, seed, own, text)
    assert longest_run(text) <= longest_run(own)


@pytest.mark.parametrize("char", list(RUN_CHARS))
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("prompt", PROMPTS)
def test_an_ensemble_in_exact_mode_writes_runs_only_where_chared_mode_does(char, seed, prompt):
    members = [runs_member(prompt, char, seed), runs_member(prompt, char, seed + 100)]
    texts = {mode: Ensemble(members, weights=[0.5, 0.5], mode=mode).generate(prompt, max_new_chars=CHARS).text
             for mode in ("chared", "exact")}
    assert longest_run(texts["exact"]) < 10 or longest_run(texts["chared"]) >= 10, texts
