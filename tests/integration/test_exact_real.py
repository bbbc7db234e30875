"""Exact mode, rules and scoring on the two real embedded models (select with -m integration)."""

import math

import numpy as np
import pytest

from chared_flows.decoding import Ensemble, Member

pytestmark = pytest.mark.integration

PROMPT = "def is_even(n: int) -> bool:"
CONTINUATION = '\n    """Return True if n is even."""\n    return n % 2 == 0\n'


@pytest.fixture(scope="module", params=["smollm2", "gemma3-270m"])
def member(request):
    return Member.load(request.param)


@pytest.fixture(scope="module")
def pair():
    return [Member.load("smollm2"), Member.load("gemma3-270m")]


def canonical_bits(member: Member, prompt: str, continuation: str) -> float:
    session = member.open_session(prompt)
    head, full = session.ids.token_ids(b""), session.ids.token_ids(continuation.encode())
    assert full[: len(head)] == head
    pos = {int(t): k for k, t in enumerate(member.assets.index.sorted_ids)}
    nats = 0.0
    for i in range(len(head), len(full)):
        probs, _ = session.next_token_probs(full[:i])
        nats -= math.log(probs[pos[full[i]]])
    return nats / math.log(2)


def test_exact_bits_do_not_exceed_canonical_bits(member):
    """Summing over tokenizations adds probability; pruning at 1e-3 costs at most ~0.03 bits here."""
    exact = Ensemble([member], mode="exact").score(PROMPT, CONTINUATION)
    assert exact.total_bits <= canonical_bits(member, PROMPT, CONTINUATION) + 1e-6
    assert exact.pruned_mass < 0.05


def test_exact_generation_two_families_valid_utf8(pair):
    result = Ensemble(pair, mode="exact", rule="product").generate("Emoji: 😀 and 你好", max_new_chars=12)
    assert result.text.encode("utf-8").decode("utf-8") == result.text and "\ufffd" not in result.text
    assert set(result.stats.pruned_mass) == {"smollm2", "gemma3-270m"}


@pytest.mark.parametrize("rule", ["mixture", "product", "adaptive"])
def test_weight_one_scores_like_the_member_alone(pair, rule):
    text = " return n % 2"
    alone = Ensemble(pair[:1], mode="exact").score(PROMPT, text)
    paired = Ensemble(pair, weights=[1, 0], mode="exact", rule=rule).score(PROMPT, text)
    np.testing.assert_allclose(paired.byte_logprobs, alone.byte_logprobs, rtol=1e-12)


def test_chared_score_and_token_healing_on_real_models(pair):
    score = Ensemble(pair, mode="chared").score("The capital of France is", " Paris.")
    assert math.isfinite(score.total_bits) and score.bytes == 7
    healed = Ensemble(pair, token_healing=True).generate("The capital of Fra", max_new_chars=8)
    assert healed.text.encode("utf-8").decode("utf-8") == healed.text


@pytest.mark.parametrize("beam_width", [1, 8])
def test_scoring_textwrap_never_loses_every_path(beam_width):
    """The standard library's textwrap.py around "This fun|ky": SmolLM2's beam pruned the " fun"
    path for " func..." and nothing could read "k"; scoring then returned infinite bits. Now the
    beam re-seeds from the text so far and the text scores finitely (beam_width=1 too)."""
    import math
    import textwrap

    source = open(textwrap.__file__, encoding="utf-8").read()
    cut = source.find("This funky")
    prompt, text = source[cut - 400: cut], source[cut: cut + 160]
    result = Ensemble([Member.load("smollm2")], mode="exact", beam_width=beam_width).score(prompt, text)
    assert math.isfinite(result.total_bits) and result.bits_per_byte < 4, result.byte_logprobs
    if beam_width == 1:
        assert sum(result.reseeds.values()) >= 1  # the narrow beam did lose its paths, and recovered
