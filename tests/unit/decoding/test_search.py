"""Greedy units and top-p over whole characters, against brute-force enumeration.

Two hand-written vocabularies hold multi-byte characters split across tokens, as the
real ones do: member A writes 😀 and 🎉 as two 2-byte pieces (SmolLM2 splits emoji),
member B has them as whole tokens and as <0xNN>-style single bytes (Gemma). The brute
force below re-derives every probability from the token masses with plain loops (no
prefix index, no rounds.py), enumerates every unit and takes the argmax / the nucleus.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from chared_flows.decoding.combine import RULE_FUNCTIONS
from chared_flows.decoding.index import END, EOS, PrefixIndex
from chared_flows.decoding.rounds import EnsembleRound, MemberRound
from chared_flows.decoding.search import SearchStats, best_unit, nucleus
from chared_flows.decoding.utf8 import incomplete_tail_start, pending_after
from chared_flows.decoding.vocab import ByteVocabulary

SMILE, PARTY = "😀".encode(), "🎉".encode()
A_TOKENS = [b"a", b"b", b"ab", b"abc", b" ", b"  ", b"\n", b"\n   ", SMILE[:2], SMILE[2:], PARTY[2:],
            b"\xc3", b"\xa9", "é".encode(), b"caf", b"x", b"\xf0"]
B_TOKENS = [b"a", b"ab", b"b", b"c", SMILE, PARTY, "é".encode(), b" ", b"\n", b"   ",
            bytes([0xF0]), bytes([0x9F]), bytes([0x98]), bytes([0x80]), b"\xa9", b"caf\xc3"]


def make_member(tokens: list[bytes], seed: int, peaky: float):
    """(PrefixIndex, probabilities by token id incl. EOS as the last id)."""
    vocab = ByteVocabulary("byte_level", False, tuple(tokens) + (None,), (len(tokens),))
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(len(tokens) + 1, peaky))
    return PrefixIndex(vocab), probs


def member_round(index: PrefixIndex, probs: np.ndarray, pending: bytes = b"") -> MemberRound:
    sorted_probs = index.sort_probs(probs) * index.validity_mask(pending)
    return MemberRound.opening(index, sorted_probs, 0.0 if pending else float(probs[-1]))


def ensemble_round(members, weights, pending=b"", rule="mixture") -> EnsembleRound:
    rounds = [member_round(index, probs, pending) for index, probs in members]
    return EnsembleRound(rounds, RULE_FUNCTIONS[rule], np.asarray(weights, float), pending)


# --- brute force ----------------------------------------------------------------


def token_masses(index: PrefixIndex, probs: np.ndarray, pending: bytes) -> tuple[dict[bytes, float], float]:
    masses: dict[bytes, float] = {}
    for token_id, data in enumerate(index.vocab.tokens):
        if data is not None and incomplete_tail_start(pending + data) is not None:
            masses[data] = masses.get(data, 0.0) + float(probs[token_id])
    return masses, (0.0 if pending else float(probs[-1]))


def brute_step(members, weights, s: bytes, pending: bytes) -> dict:
    """The combined next-option distribution inside a round after in-round bytes `s` (mixture)."""
    conditionals, active = [], []
    for (index, probs), w in zip(members, weights):
        masses, eos = token_masses(index, probs, pending)
        starts = sum(m for t, m in masses.items() if t.startswith(s)) + (eos if not s else 0.0)
        if starts <= 0 or w <= 0:
            continue
        cond: dict = {}
        for t, m in masses.items():
            if t.startswith(s) and len(t) > len(s):
                cond[t[len(s)]] = cond.get(t[len(s)], 0.0) + m / starts
            elif t == s and s:
                cond[END] = cond.get(END, 0.0) + m / starts
        if not s and eos:
            cond[EOS] = eos / starts
        conditionals.append(cond)
        active.append(w)
    total_w = sum(active)
    out: dict = {}
    for cond, w in zip(conditionals, active):
        for option, p in cond.items():
            out[option] = out.get(option, 0.0) + p * w / total_w
    return out


def brute_units(members, weights, pending=b"", extend_depth=0, prefix=b"", logp=0.0, past_whitespace=False):
    """Every (bytes, terminal) unit a greedy search may return, with its log-probability.

    A unit whose END falls inside a character continues in a fresh round (the same
    members, opened after it) when `extend_depth` allows, as best_unit's `extend` does.
    """
    units = []

    def walk(s: bytes, lp: float, tail: bytes):
        dist = brute_step(members, weights, s, pending)
        for option, p in dist.items():
            if p <= 0:
                continue
            if option == EOS:
                units.append((prefix + s, EOS, lp + math.log(p)))
            elif option == END:
                whitespace_only = past_whitespace and (prefix + s).isspace()
                if (tail or whitespace_only) and extend_depth > 0:
                    units.extend(brute_units(members, weights, tail, extend_depth - 1, prefix + s, lp + math.log(p),
                                             past_whitespace))
                else:
                    units.append((prefix + s, END, lp + math.log(p)))
            else:
                walk(s + bytes([option]), lp + math.log(p), pending_after(tail, option))

    walk(b"", logp, pending)
    return units


SETUPS = [
    ("A alone", [("A", 1.0)]),
    ("B alone", [("B", 1.0)]),
    ("A+B 0.5", [("A", 0.5), ("B", 0.5)]),
    ("A+B 0.8", [("A", 0.8), ("B", 0.2)]),
]


def members_for(setup, seed: int, peaky: float):
    tokens = {"A": A_TOKENS, "B": B_TOKENS}
    members = [make_member(tokens[name], seed + i, peaky) for i, (name, _) in enumerate(setup)]
    return members, [w for _, w in setup]


@pytest.mark.parametrize("label, setup", SETUPS)
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("peaky", [0.3, 2.0])
def test_greedy_unit_is_the_brute_force_argmax(label, setup, seed, peaky) -> None:
    members, weights = members_for(setup, seed, peaky)
    units = brute_units(members, weights)
    want = max(units, key=lambda u: u[2])
    got = best_unit(ensemble_round(members, weights))
    assert (got.data, got.terminal) == want[:2], (label, got, want)
    assert got.logp == pytest.approx(want[2], rel=1e-9)


@pytest.mark.parametrize("label, setup", SETUPS)
@pytest.mark.parametrize("seed", range(6))
def test_greedy_unit_with_continuation_ends_on_a_whole_character(label, setup, seed) -> None:
    members, weights = members_for(setup, seed, 0.3)

    def extend(node, data):  # the next round: the same members, opened after `data`
        return ensemble_round(members, weights, node.pending)

    units = brute_units(members, weights, extend_depth=3)
    want = max(units, key=lambda u: u[2])
    got = best_unit(ensemble_round(members, weights), extend=extend)
    assert (got.data, got.terminal) == want[:2], (label, got, want)
    assert got.logp == pytest.approx(want[2], rel=1e-9)
    assert incomplete_tail_start(got.data) == len(got.data) or got.terminal == EOS  # whole characters


def brute_nucleus_units(members, weights):
    """Whole first characters, partial characters closed by END, and EOS, with probabilities."""
    out = []

    def walk(s: bytes, lp: float, tail: bytes):
        for option, p in brute_step(members, weights, s, b"").items():
            if p <= 0:
                continue
            if option in (END, EOS):
                out.append((s, option, lp + math.log(p)))
            elif pending_after(tail, option) == b"":
                out.append((s + bytes([option]), None, lp + math.log(p)))
            else:
                walk(s + bytes([option]), lp + math.log(p), pending_after(tail, option))

    walk(b"", 0.0, b"")
    return out


@pytest.mark.parametrize("label, setup", SETUPS)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("top_p", [0.3, 0.7, 0.95, 1.0])
def test_nucleus_is_the_smallest_set_of_whole_characters(label, setup, seed, top_p) -> None:
    members, weights = members_for(setup, seed, 0.5)
    units = sorted(brute_nucleus_units(members, weights), key=lambda u: -u[2])
    assert sum(math.exp(u[2]) for u in units) == pytest.approx(1.0, abs=1e-9)
    want, mass = [], 0.0
    for unit in units:
        if mass >= top_p:
            break
        want.append(unit)
        mass += math.exp(unit[2])
    stats = SearchStats()
    got = nucleus(ensemble_round(members, weights), top_p, stats)
    as_units = []
    for c in got:
        data = c.data if c.option in (None, END, EOS) else c.data + bytes([c.option])
        as_units.append((data, c.option if c.option in (END, EOS) else None, c.logp))
    assert [u[:2] for u in as_units] == [u[:2] for u in want], label
    np.testing.assert_allclose([u[2] for u in as_units], [u[2] for u in want], rtol=1e-9)
    assert stats.capped == 0
    # whole characters: a unit ends on a character boundary unless END closes it mid-character
    for data, terminal, _ in as_units:
        assert terminal == END or incomplete_tail_start(data) == len(data)


def test_capped_search_returns_its_best_so_far_and_says_so() -> None:
    members, weights = members_for(SETUPS[2][1], 0, 2.0)
    stats = SearchStats()
    unit = best_unit(ensemble_round(members, weights), stats, max_expansions=1)
    assert stats.capped == 1 and unit is not None


def test_a_member_adopts_its_own_token_only_where_it_would_end_it():
    """ending_token: a token equal to the round's bytes counts only if END is the member's own best option."""
    index, probs = make_member([b"a", b"ab", b"abc"], seed=0, peaky=1.0)
    probs[:] = [0.001, 0.9, 0.099, 0.0]  # after "a", the member would continue ("ab" much likelier)
    node = member_round(index, probs).advance(ord("a"), b"")
    node.distribution(b"")
    assert node.ending_token() is None  # another member cut the round here: not this member's split
    assert node.ending_token(alone=True) == 0  # alone, the round's END is its own choice
    longer = member_round(index, probs).advance(ord("a"), b"").advance(ord("b"), b"")
    longer.distribution(b"")
    assert longer.ending_token() == 1  # "ab" is where it would end: adopted


@pytest.mark.parametrize("label, setup", SETUPS)
@pytest.mark.parametrize("seed", range(6))
def test_units_extend_where_may_end_says_so(label, setup, seed) -> None:
    """best_unit's may_end hook: here a unit that is whitespace alone goes on into the next token end."""
    members, weights = members_for(setup, seed, 0.3)

    def whole_characters_past_whitespace(node, data):
        return not node.pending and not data.isspace()

    def extend(node, data):
        return ensemble_round(members, weights, node.pending)

    units = [u for u in brute_units(members, weights, extend_depth=3, past_whitespace=True)
             if u[1] == EOS or not u[0].isspace()]
    want = max(units, key=lambda u: u[2])
    got = best_unit(ensemble_round(members, weights), extend=extend, may_end=whole_characters_past_whitespace)
    assert (got.data, got.terminal) == want[:2], (label, got, want)
    assert got.logp == pytest.approx(want[2], rel=1e-9)
    assert got.terminal == EOS or not got.data.isspace()
