"""Exact mode against brute-force enumeration of every tokenization."""

import math
from functools import lru_cache

import numpy as np
import pytest
import torch

from chared_flows.decoding import Ensemble, Member
from chared_flows.decoding.exact import ExactBeam
from chared_flows.decoding.utf8 import next_byte_mask
from chared_flows.decoding.index import EOS, NUM_OPTIONS
from chared_flows.decoding.utf8 import split_complete
from chared_flows.decoding.backends.transformers import UncachedRunner
from tests.fixtures.tiny import (
    PAD_ROWS,
    runs_tokenizer,
    scripted_member,
    table_member,
    tiny_member,
    tiny_model,
    tokenizer_for,
)

NO_PRUNING = dict(beam_width=65_536, prune_threshold=0.0)


def f64_member(kind: str, seed: int, arch: str = "llama") -> Member:
    """A tiny model in float64, so cached (beam) and uncached (brute force) logits agree to ~1e-15.

    Subtle: in float32 the KV-cached and the full forward pass differ by ~1e-7,
    which would hide the combinatorics under numerical noise.
    """
    tok = tokenizer_for(kind)
    model = tiny_model(len(tok) + PAD_ROWS, seed=seed, arch=arch).double()
    return Member.from_pretrained(model, tok, name=f"f64-{kind}-{arch}")


class BruteForce:
    """P(text prefix) by recursion over every token sequence whose bytes start with the text."""

    def __init__(self, member):
        self.runner = UncachedRunner(member.assets.model)
        self.vocab = member.assets.vocab
        self._probs = lru_cache(maxsize=None)(self._forward)

    def _forward(self, ids: tuple) -> np.ndarray:
        logits = self.runner.next_logits(ids)
        return torch.softmax(logits[: len(self.vocab)].double(), -1).numpy()

    def prefix(self, ids: tuple, rest: bytes) -> float:
        """Sum over token sequences after `ids` whose bytes start with `rest`."""
        if not rest:
            return 1.0
        probs, total = self._probs(ids), 0.0
        for token_id, data in enumerate(self.vocab.tokens):
            if not data:
                continue
            if data.startswith(rest):  # this token covers the rest (equal or longer)
                total += probs[token_id]
            elif rest.startswith(data):
                total += probs[token_id] * self.prefix(ids + (token_id,), rest[len(data):])
        return total

    def next_byte_masses(self, ids: tuple, rest: bytes) -> np.ndarray:
        """prefix(ids, rest + b) for all 256 bytes b in one recursion (prefix() 256 times is slow)."""
        out, probs = np.zeros(256), self._probs(ids)
        for token_id, data in enumerate(self.vocab.tokens):
            if not data:
                continue
            if data.startswith(rest) and len(data) > len(rest):  # the token writes the next byte itself
                out[data[len(rest)]] += probs[token_id]
            elif rest.startswith(data):  # the token ends inside rest, or exactly at its end
                out += probs[token_id] * self.next_byte_masses(ids + (token_id,), rest[len(data):])
        return out

    def ends_with_eos(self, ids: tuple, rest: bytes) -> float:
        """Sum over token sequences whose bytes are exactly `rest`, times p(EOS) after them."""
        probs = self._probs(ids)
        if not rest:
            return float(sum(probs[i] for i in self.vocab.eos_token_ids))
        total = 0.0
        for token_id, data in enumerate(self.vocab.tokens):
            if data and rest.startswith(data):
                total += probs[token_id] * self.ends_with_eos(ids + (token_id,), rest[len(data):])
        return total

    def distribution(self, ids: tuple, text: bytes, candidates: list[int] | None) -> np.ndarray:
        """Unnormalised next options after `text`; candidates None: all 256 bytes in one recursion."""
        out = np.zeros(NUM_OPTIONS)
        if candidates is None:
            out[:256] = self.next_byte_masses(ids, text)
        for b in candidates or ():
            out[b] = self.prefix(ids, text + bytes([b]))
        pending = split_complete(text)[1]
        out[:256] *= next_byte_mask(pending)
        out[EOS] = 0.0 if pending else self.ends_with_eos(ids, text)
        return out


CASES = [("byte_level", "The", " quick"), ("byte_fallback", "Th", " qu"), ("byte_fallback", "Caf", "é 😀")]


@pytest.mark.parametrize("kind, prompt, continuation", CASES)
def test_exact_distribution_equals_brute_force(kind, prompt, continuation):
    member = f64_member(kind, seed=3)
    beam = ExactBeam.start(member.open_session(prompt), **NO_PRUNING)
    brute = BruteForce(member)
    anchor = tuple(member.open_session(prompt).ids.anchor(4)[0])
    consumed = member.open_session(prompt).ids.anchor(4)[1]
    for byte in continuation.encode("utf-8") + b"":
        got = beam.distribution(split_complete(consumed)[1])
        # Brute force over all 256 bytes is slow; check every byte the beam gives mass
        # to, plus the true next byte and a few it gives none.
        candidates = sorted(set(np.flatnonzero(got[:256] > 1e-3).tolist()) | {byte, 0, 0x80, 0xFF})
        want = brute.distribution(anchor, consumed, candidates)
        # Compare as conditionals over the checked options: both sides renormalised.
        mask = np.zeros(NUM_OPTIONS, bool)
        mask[candidates] = True
        mask[EOS] = True
        scale = got[mask].sum() / want[mask].sum()
        np.testing.assert_allclose(got[mask], want[mask] * scale, rtol=1e-9, atol=1e-15, err_msg=repr(consumed))
        # And the full normaliser: brute-force P(x+b) summed over all bytes = P(x) minus specials.
        beam = beam.advance(byte)
        consumed += bytes([byte])
    assert beam.pruned_mass == 0.0


def test_exact_prefix_mass_matches_brute_force_total():
    """Unnormalised check: sum_b P(x+b) + P(x, EOS) from brute force equals the beam's normaliser ratio."""
    member = f64_member("byte_level", seed=4)
    brute = BruteForce(member)
    session = member.open_session("Tom")
    anchor = tuple(session.ids.anchor(4)[0])
    beam = ExactBeam.start(session, **NO_PRUNING)
    text = b" has"
    logp_beam = 0.0
    for byte in text:
        logp_beam += math.log(beam.distribution(b"")[byte])
        beam = beam.advance(byte)
    # Conditionals renormalise over text + EOS at each step, so compare against the
    # same renormalised product computed by brute force.
    logp_brute = 0.0
    for i, byte in enumerate(text):
        dist = brute.distribution(anchor, text[:i], list(range(256)))
        logp_brute += math.log(dist[byte] / dist.sum())
    assert logp_beam == pytest.approx(logp_brute, rel=1e-9, abs=1e-9)


BOUND_CASES = [("byte_level", "The", " quick"), ("byte_fallback", "Th", " quick"), ("byte_level", "Caf", "é 😀")]
SETTINGS = [NO_PRUNING, dict(beam_width=4, prune_threshold=0.01), dict(beam_width=2, prune_threshold=0.05),
            dict(beam_width=1, prune_threshold=0.5)]


@pytest.mark.parametrize("kind, prompt, text", BOUND_CASES)
def test_bound_bits_are_exact_without_pruning_and_never_below_the_truth_with_it(kind, prompt, text):
    """ScoreResult.bound_bits against brute force: P(text | prompt) = P(tail + text) / P(tail),
    every tokenization summed, relative to the anchor the beam started from."""
    member = f64_member(kind, seed=3)
    brute = BruteForce(member)
    chains = []
    for setting in SETTINGS:
        result = Ensemble([member], mode="exact", **setting).score(prompt, text)
        anchor, tail = ExactBeam.start(member.open_session(prompt), **setting).anchor  # the scoring's own start
        true_bits = (math.log(brute.prefix(anchor, tail)) - math.log(brute.prefix(anchor, tail + text.encode()))) / math.log(2)
        if result.reseeds:  # restarted from another anchor: no bound is claimed
            assert member.name not in result.bound_bits
            continue
        bound = result.bound_bits[member.name]
        if setting is NO_PRUNING:
            assert bound == pytest.approx(true_bits, rel=1e-9, abs=1e-9)
            # The chain renormalises each byte over the valid options (UTF-8, EOS): never more bits.
            assert result.total_bits <= true_bits + 1e-9
            best_estimate = result.total_bits
        else:
            assert bound >= true_bits - 1e-9, (setting, bound, true_bits)
            chains.append(result.total_bits - best_estimate)
    if kind == "byte_level":  # (the tiny byte-fallback model re-seeds under every pruning setting here)
        assert chains and min(chains) < 0  # pruning renormalises over fewer paths: fewer bits than the best estimate


def test_pruning_reports_mass_and_keeps_the_beam_small():
    member = tiny_member("byte_fallback", seed=2)
    beam = ExactBeam.start(member.open_session("Tom has"), beam_width=2, prune_threshold=0.01)
    for byte in b" 3 apples":
        assert beam.distribution(b"") is not None
        beam = beam.advance(byte)
        assert len(beam.paths) <= 2
    assert 0.0 < beam.pruned_mass < 1.0


def test_prompt_tail_is_marginalised_across_the_boundary():
    """The prompt "Tom h" ends mid-word; exact mode's first byte equals the brute force over "Tom h"."""
    member = f64_member("byte_fallback", seed=3)
    session = member.open_session("Tom h")
    anchor, tail = session.ids.anchor(4)
    assert tail.endswith(b"h") and len(anchor) >= 1
    ens = Ensemble([member], mode="exact", **NO_PRUNING)
    score = ens.score("Tom h", "as")
    brute = BruteForce(member)
    want = brute.distribution(tuple(anchor), tail, list(range(256)))
    assert score.byte_logprobs[0] == pytest.approx(math.log(want[ord("a")] / want.sum()), rel=1e-9)


def test_exact_generation_reproduces_a_scripted_text_and_stops_at_eos():
    script = "Hello 😀 world, 你好!"
    # Subtle: the scripted runner takes its first call's text as the prompt, so the
    # prompt must be one token (no back-off happens before the first pass).
    ens = Ensemble([scripted_member(script)], mode="exact")
    result = ens.generate("Q", max_new_chars=100)
    assert result.text == script and result.finish_reason == "eos"
    assert "".join(result.rounds) == script


def test_exact_mode_two_families_and_output_is_valid_utf8():
    ens = Ensemble([tiny_member("byte_level", 0), tiny_member("byte_fallback", 1)], mode="exact", rule="product")
    for seed in range(4):
        result = ens.generate("Emoji: 😀 你好", max_new_chars=12, temperature=1.3, seed=seed)
        assert result.text.encode("utf-8").decode("utf-8") == result.text and "\ufffd" not in result.text
        assert set(result.stats.pruned_mass) == set(ens.names)


def test_exact_greedy_is_deterministic_and_members_advance_independently():
    bl, bf = tiny_member("byte_level", 0), tiny_member("byte_fallback", 1)
    ens = Ensemble([bl, bf], mode="exact", rule="adaptive")
    a = ens.generate("Question: what is 12 + 30?", max_new_chars=15)
    b = ens.generate("Question: what is 12 + 30?", max_new_chars=15)
    assert a.text == b.text
    # No shared rounds: the members' forward-pass counts differ (their tokens end at different bytes).
    assert a.stats.rounds == 0 and 1 <= a.stats.steps <= len(a.text.encode())


@pytest.mark.parametrize("kind", ["byte_level", "byte_fallback"])
def test_a_beam_that_loses_every_path_is_reseeded_and_never_gives_infinite_bits(kind):
    """beam_width=1 keeps one tokenization; where it cannot read on, the beam restarts from the
    canonical tokenization of the text so far instead of scoring the byte as impossible."""
    member = tiny_member(kind, seed=2)
    texts = [" 3 apples and 5 more.", "\n    return a + b\n", " résumé, déjà vu 😀", "    indented    runs"]
    narrow = Ensemble([member], mode="exact", beam_width=1, prune_threshold=0.0)
    reseeds = 0
    for text in texts:
        result = narrow.score("Tom has", text)
        assert math.isfinite(result.total_bits), (text, result.byte_logprobs)
        reseeds += sum(result.reseeds.values())
    assert reseeds > 0  # the narrow beam did lose its paths, and recovered
    wide = Ensemble([member], mode="exact", beam_width=64, prune_threshold=0.0).score("Tom has", texts[0])
    assert wide.reseeds == {}


def test_narrow_beam_generation_keeps_every_member_writing():
    ens = Ensemble([tiny_member("byte_level", 0), tiny_member("byte_fallback", 1)], mode="exact", beam_width=1)
    for seed in range(3):
        result = ens.generate("Emoji: 😀 你好", max_new_chars=20, temperature=1.2, seed=seed)
        assert result.text and not result.stats.abstentions, result.stats


@pytest.mark.parametrize("kind, arch", [("byte_level", "llama"), ("byte_fallback", "llama"),
                                        ("byte_fallback", "gemma3")])
def test_scoring_with_the_prefilled_canonical_tokens_equals_pass_by_pass(kind, arch, monkeypatch):
    """One pass over the text's canonical tokens serves the beam's canonical prefixes: same bits.

    (gemma3: a 6-token sliding window, shorter than the text, so the prefill's snapshots of
    early prefixes must come from the sliding layers' full history.)
    """
    from chared_flows.decoding.ahead import AheadPasses

    member = f64_member(kind, seed=5, arch=arch)
    ens = Ensemble([member], mode="exact", prune_threshold=1e-4)
    text = " has 3 apples. Café 😀\n    return a + b"
    prefilled = ens.score("Tom", text)
    monkeypatch.setattr(AheadPasses, "prefill_text", lambda self, text: None)
    pass_by_pass = ens.score("Tom", text)
    np.testing.assert_allclose(prefilled.byte_logprobs, pass_by_pass.byte_logprobs, rtol=1e-9, atol=1e-12)
    name = ens.names[0]
    assert prefilled.forward_passes[name] < pass_by_pass.forward_passes[name]


def test_exact_greedy_writes_a_whitespace_token_that_beats_eos_after_other_text():
    """P(" ") 0.5 > P(EOS) 0.2 > P(" 3") 0.17: token greedy writes " " then "3", not nothing.

    (SmolLM2 after "...\\nAnswer:" writes digits as " " then "3"; joining the space with the
    next token pitted a two-token string against EOS and the answer was empty.)
    """
    table = {
        b"": {b" ": 0.5, "EOS": 0.2, b"A": 0.15, b"B": 0.15},
        b" ": {b"1": 0.33, b"2": 0.33, b"3": 0.34},
    }
    result = Ensemble([table_member("Answer:", table)], mode="exact").generate("Answer:", max_new_chars=10)
    assert result.text == " 3" and result.finish_reason == "eos"


def test_exact_greedy_commits_to_its_token_end_instead_of_writing_a_run():
    """After "*" (0.3) the paths inside "**" and "***" (0.25 each) must write more stars.

    Kept, they made "one more *" the best token end (0.25 + 0.3 * 0.4 > 0.3 * 0.6 for "\n"):
    greedy wrote "***" where the model's own greedy writes "*\n". Committed to the "*" it
    chose, exact greedy writes what token greedy writes.
    """
    table = {
        b"": {b"*": 0.3, b"**": 0.25, b"***": 0.25, b"ok": 0.2},
        b"*": {b"\n": 0.6, b"*": 0.4},
    }
    member = table_member("Title\n", table, tokenizer=runs_tokenizer())
    result = Ensemble([member], mode="exact").generate("Title\n", max_new_chars=10)
    assert result.text == "*\n", result.text


@pytest.mark.parametrize("kind, arch", [("byte_level", "llama"), ("byte_fallback", "gemma3")])
def test_scoring_with_passes_queued_ahead_equals_pass_by_pass_in_fewer_calls(kind, arch, monkeypatch):
    """Passes the known text will owe are queued ahead and leave in shared batches: same bits, fewer calls.

    Nothing queued ahead is left behind: the passes never owed are cancelled, never run.
    """
    from chared_flows.decoding import scoring
    from chared_flows.decoding.backends.scheduler import scheduler_for

    member = f64_member(kind, seed=5, arch=arch)
    scheduler = scheduler_for(member.assets.backend)
    ens = Ensemble([member], mode="exact", prune_threshold=1e-4)
    text = " has 3 apples. Café 😀\n    return a + b, and the quick brown fox"
    calls, rows = {}, {}
    results = {}
    for ahead in (False, True):
        monkeypatch.setattr(scoring, "QUEUE_AHEAD", ahead)
        before = scheduler.batches, scheduler.passes
        results[ahead] = ens.score("Tom", text)
        calls[ahead], rows[ahead] = scheduler.batches - before[0], scheduler.passes - before[1]
    np.testing.assert_allclose(results[True].byte_logprobs, results[False].byte_logprobs, rtol=1e-9, atol=1e-12)
    assert calls[True] < calls[False], (calls, rows)
    assert rows[True] <= 1.1 * rows[False], rows  # queued only where sure to pass the threshold (beam width aside)
    assert not scheduler._queue  # nothing queued ahead is left to run


@lru_cache(maxsize=None)
def _f64_pair() -> tuple[Member, Member]:
    return f64_member("byte_level", seed=3), f64_member("byte_fallback", seed=5)


@lru_cache(maxsize=None)
def _true_conditionals(k: int, anchor: tuple, tail: bytes, text: bytes) -> list[np.ndarray]:
    """Brute force: member k's next-option distribution at every byte of `text`, all tokenizations summed."""
    brute = BruteForce(_f64_pair()[k])
    dists = []
    for i in range(len(text)):
        read = tail + text[:i]
        dist = brute.distribution(anchor, read, None)
        # the one-recursion oracle agrees with the original one on the byte that matters
        assert dist[text[i]] == pytest.approx(brute.prefix(anchor, read + text[i:i + 1]), rel=1e-12)
        dists.append(dist / dist.sum())
    return dists


def _combined_bits(rule: str, weights, per_member: list[list[np.ndarray]], text: bytes) -> float:
    bits = 0.0
    for i, byte in enumerate(text):
        dists = [member_dists[i] for member_dists in per_member]
        if rule == "mixture":
            q = sum(w * d for w, d in zip(weights, dists))
        else:  # product, renormalised over the options
            with np.errstate(divide="ignore"):
                q = np.exp(sum(w * np.log(d) for w, d in zip(weights, dists)))
            q = q / q.sum()
        bits -= math.log2(q[byte])
    return bits


@pytest.mark.parametrize("rule", ["mixture", "product"])
def test_ensemble_bound_bits_never_below_the_ensembles_true_bits(rule):
    """Two members with different tokenizers: the ensemble's chain equals brute force without
    pruning, and ensemble_bound_bits (weighted mean of the member bounds) is never below the
    ensemble's true bits, with pruning or without."""
    members = _f64_pair()
    weights = [0.3, 0.7]
    prompt, text = "The", b" quick"
    for setting in SETTINGS:
        result = Ensemble(members, mode="exact", rule=rule, weights=weights, **setting).score(prompt, text.decode())
        anchors = [ExactBeam.start(m.open_session(prompt), **setting).anchor for m in members]  # the scoring's own
        truth = _combined_bits(rule, weights, [_true_conditionals(k, *a, text) for k, a in enumerate(anchors)], text)
        if result.reseeds:
            assert result.ensemble_bound_bits is None
            continue
        assert result.ensemble_bound_bits >= truth - 1e-9, (setting, result.ensemble_bound_bits, truth)
        if setting is NO_PRUNING:
            assert result.total_bits == pytest.approx(truth, rel=1e-9, abs=1e-9)
            members_bits = [result.bound_bits[m.name] for m in members]  # exact without pruning
            assert result.ensemble_bound_bits == pytest.approx(np.dot(weights, members_bits), rel=1e-12)
            assert result.ensemble_bound_bits > truth  # looser by the ensemble's gain, not equal


def test_ensemble_bound_bits_is_none_for_the_adaptive_rule_and_the_member_bound_alone():
    members = _f64_pair()
    adaptive = Ensemble(members, mode="exact", rule="adaptive", **NO_PRUNING).score("The", " q")
    assert adaptive.bound_bits and adaptive.ensemble_bound_bits is None
    alone = Ensemble(members, mode="exact", rule="adaptive", weights=[0.0, 1.0], **NO_PRUNING).score("The", " q")
    assert alone.ensemble_bound_bits == alone.bound_bits[members[1].name]
