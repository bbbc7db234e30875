"""Ensemble.score: per-byte log-probabilities in both modes; chared scoring against its own procedure."""

import math

import numpy as np
import pytest

from chared_flows.decoding import Ensemble, ScoreResult
from chared_flows.decoding.generation import Generation
from chared_flows.errors import ConfigError
from tests.fixtures.tiny import scripted_member, tiny_member


@pytest.fixture(scope="module")
def bl():
    return tiny_member("byte_level", seed=0)


@pytest.fixture(scope="module")
def bf():
    return tiny_member("byte_fallback", seed=1)


@pytest.mark.parametrize("mode", ["chared", "exact"])
def test_score_fields_are_consistent(bl, bf, mode):
    text = "naïve 😀"
    result = Ensemble([bl, bf], mode=mode).score("Café", text)
    assert isinstance(result, ScoreResult)
    assert result.bytes == len(text.encode()) == len(result.byte_logprobs) and result.chars == len(text)
    assert all(lp <= 1e-12 for lp in result.byte_logprobs)
    assert result.total_bits == pytest.approx(-sum(result.byte_logprobs) / math.log(2))
    assert result.bits_per_byte == pytest.approx(result.total_bits / result.bytes)
    assert result.bits_per_char == pytest.approx(result.total_bits / result.chars)
    assert 0.0 <= result.pruned_mass <= 1.0


@pytest.mark.parametrize("mode", ["exact", "chared"])
def test_empty_continuation_is_a_clear_error_not_nan(bl, mode):
    # 0 bits over 0 characters has no rate; NaN bits/char would poison every mean it joins
    with pytest.raises(ConfigError, match="continuation is empty; score at least one character"):
        Ensemble([bl], mode=mode).score("Hi", "")


def _decoding(ens, prompt):
    return Generation(ens, prompt, ens.config.replace(max_new_chars=10))


def test_scripted_text_scores_near_zero_bits_in_both_modes():
    script = "Hello 😀 world"
    for mode in ("chared", "exact"):
        result = Ensemble([scripted_member(script)], mode=mode).score("Q", script)
        assert result.total_bits < 1e-3, (mode, result.byte_logprobs)


def test_chared_score_of_a_one_round_text_matches_the_procedure(bl):
    """Sum over round ends, checked on the first byte: P(first byte) equals the first step's choice."""
    ens = Ensemble([bl], mode="chared")
    session = bl.open_session("Tom has")
    dist = session.member_round(session.ids.token_ids(b""), b"").distribution(b"")
    result = ens.score("Tom has", " 3")
    assert result.byte_logprobs[0] == pytest.approx(math.log(dist[ord(" ")]), rel=1e-9)


def test_chared_score_sums_over_where_the_first_round_ends(bl):
    """P(b1 b2) = c0[b1] * (c0|b1[b2] + c0|b1[END] * c1[b2]): both ways the procedure writes 2 bytes."""
    ens, prompt = Ensemble([bl], mode="chared", prune_threshold=0.0), "Tom has"  # no round start may be pruned
    session = bl.open_session(prompt)

    def step(prefix: bytes, start: int):
        """Option distribution in a round opened at `start`, after in-round bytes `prefix`."""
        node = session.member_round(session.ids.token_ids(prefix[:start]), b"")
        for byte in prefix[start:]:
            node = node.advance(byte, b"")
        return node.distribution(b"")

    c0 = step(b"", 0)
    b1 = int(np.argmax(c0[:256]))
    c01, c1 = step(bytes([b1]), 0), step(bytes([b1]), 1)
    assert c01[256] > 0  # a token equal to b1 exists, so the round may end after it
    b2 = int(np.argmax(c01[:256] + c01[256] * c1[:256]))
    want = [math.log(c0[b1]), math.log(c01[b2] + c01[256] * c1[b2])]
    got = ens.score(prompt, bytes([b1, b2]).decode()).byte_logprobs
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_exact_one_member_beats_or_equals_canonical_tokenization(bl):
    """Summing over tokenizations can only add probability to the canonical path (no pruning)."""
    # No pruning: keep it short, paths grow ~2^bytes on a random model (and ~4^bytes with
    # byte fallback, where "a" and <0x61> are two tokens with the same bytes).
    prompt, text = "Tom", " has 3"
    exact = Ensemble([bl], mode="exact", beam_width=65_536, prune_threshold=0.0).score(prompt, text)
    session = bl.open_session(prompt)
    full = session.ids.token_ids(text.encode())
    start = len(session.ids.token_ids(b""))
    canonical = 0.0
    for i in range(start, len(full)):
        probs, _ = session.next_token_probs(full[:i])
        pos = int(np.flatnonzero(bl.assets.index.sorted_ids == full[i])[0])
        canonical += math.log(probs[pos])
    assert -sum(exact.byte_logprobs) <= -canonical + 1e-9


def test_token_healing_rewrites_the_cut_bytes_without_emitting_them(bl, bf):
    ens = Ensemble([bl, bf], mode="chared", token_healing=True)
    result = ens.generate("Tom has 3 app", max_new_chars=10)
    plain = Ensemble([bl, bf], mode="chared").generate("Tom has 3 app", max_new_chars=10)
    assert len(result.text) <= 10 and result.text.encode().decode() == result.text
    assert result.stats.chars == len(result.text)
    run = _decoding(ens, "Tom has 3 app")
    assert run.output.forced and b"Tom has 3 app".endswith(run.output.forced)
    assert all(s.ids.context_text == "Tom has 3 app"[: -len(run.output.forced)] for s in run.sessions)
    assert isinstance(plain.text, str)


def test_token_healing_scripted_member_continues_the_word():
    """Healed, a member that writes "apples." after the cut continues the word; only "les." is output."""
    prompt = "Tom has 3 app"
    probe = _decoding(Ensemble([scripted_member("x")], mode="chared", token_healing=True), prompt)
    cut = probe.output.forced.decode()
    assert cut and prompt.endswith(cut) and cut.endswith("app")
    ens = Ensemble([scripted_member(cut + "les.")], mode="chared", token_healing=True)
    result = ens.generate(prompt, max_new_chars=100)
    assert result.text == "les." and result.finish_reason == "eos" and "".join(result.rounds) == "les."


def test_chared_score_is_the_probability_that_sampling_writes_the_text(bl, bf):
    """Sampled texts' frequencies match exp(score): generation and scoring walk the same procedure.

    Two members of different families, so rounds end where one member's token ends and
    the other's does not; each member then continues from its own token or from the
    canonical tokenization, and the score must follow exactly the same states.
    """
    from scipy import stats

    ens = Ensemble([bl, bf], weights=[0.6, 0.4], mode="chared", token_healing=False, prune_threshold=0.0)
    prompt, n = "Tom has", 2000
    counts: dict[str, int] = {}
    for seed in range(n):
        text = ens.generate(prompt, max_new_chars=3, temperature=1.0, seed=seed).text
        if len(text) == 3:  # texts cut by the length limit: their probability is a prefix probability
            counts[text] = counts.get(text, 0) + 1
    top = sorted(counts, key=counts.get, reverse=True)[:8]
    expected = [n * math.exp(sum(ens.score(prompt, t).byte_logprobs)) for t in top]
    observed = [counts[t] for t in top]
    rest_obs, rest_exp = n - sum(observed), n - sum(expected)
    p_value = stats.chisquare(observed + [rest_obs], expected + [rest_exp]).pvalue
    assert p_value > 1e-3, list(zip(top, observed, expected))


@pytest.mark.parametrize("mode", ["chared", "exact"])
def test_scoring_past_a_context_window_is_an_error_not_a_silent_member_drop(mode):
    from chared_flows.decoding import Member, MemberAssets
    from chared_flows.errors import ContextWindowError
    from tests.fixtures.tiny import PAD_ROWS, tiny_model, tokenizer_for

    tok = tokenizer_for("byte_level")
    model = tiny_model(len(tok) + PAD_ROWS, seed=3)
    small = Member(MemberAssets.build("small-window", tok, Member.from_pretrained(model, tok, name="x").assets.backend,
                                      num_rows=len(tok) + PAD_ROWS, context_window=12))
    with pytest.raises(ContextWindowError, match="context window at byte"):
        Ensemble([small], mode=mode).score("Tom", " has 3 apples and buys 5 more apples today")
