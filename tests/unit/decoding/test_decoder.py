import numpy as np
import pytest
from scipy import stats

from chared_flows.decoding import Ensemble
from chared_flows.decoding.generation import Generation
from chared_flows.errors import ConfigError
from tests.fixtures.tiny import scripted_member, tiny_member


@pytest.fixture(scope="module")
def bl():
    return tiny_member("byte_level", seed=0)


@pytest.fixture(scope="module")
def bf():
    return tiny_member("byte_fallback", seed=1)


def first_round_bytes(ens, prompt, seed, temperature):
    run = Generation(ens, prompt, ens.config.replace(max_new_chars=10_000, temperature=temperature, seed=seed))
    for _ in run.steps.step():
        pass
    return "EOS" if run.finish == "eos" else (run.steps.round_bytes[0] if run.steps.round_bytes else b"")


def expected_first_token_distribution(member, prompt, temperature):
    """The member's own next-token distribution, grouped by token bytes, over valid UTF-8 tokens + EOS."""
    session = member.open_session(prompt)
    logits = session.runner.next_logits(session.ids.token_ids(b"")).double()
    vocab = member.assets.vocab
    probs = np.exp((logits / temperature - (logits / temperature).max()).numpy())[: len(vocab)]
    out: dict = {}
    valid = dict(zip(member.assets.index.sorted_bytes, member.assets.index.valid_at_boundary))
    for token_id, data in enumerate(vocab.tokens):
        if data is not None and valid[data]:
            out[data] = out.get(data, 0.0) + probs[token_id]
    out["EOS"] = sum(probs[i] for i in vocab.eos_token_ids)
    total = sum(out.values())
    return {k: v / total for k, v in out.items()}


@pytest.mark.parametrize("kind, temperature", [("byte_level", 1.0), ("byte_fallback", 1.0), ("byte_level", 0.6)])
def test_one_member_sampling_reproduces_its_token_distribution(kind, temperature):
    member = tiny_member(kind, seed=5)
    ens = Ensemble([member], weights=[1.0], mode="chared", token_healing=False)
    prompt = "Tom has 3 apples"
    want = expected_first_token_distribution(member, prompt, temperature)
    n = 3000
    counts: dict = {}
    for seed in range(n):
        got = first_round_bytes(ens, prompt, seed, temperature)
        counts[got] = counts.get(got, 0) + 1
    assert set(counts) <= set(want), set(counts) - set(want)
    # Chi-square goodness of fit, rare outcomes pooled so every bin expects >= 5.
    keys = sorted(want, key=lambda k: -want[k])
    big = [k for k in keys if want[k] * n >= 5]
    observed = [counts.get(k, 0) for k in big] + [n - sum(counts.get(k, 0) for k in big)]
    expected = [want[k] * n for k in big] + [n * (1 - sum(want[k] for k in big))]
    if expected[-1] < 1e-9:
        observed, expected = observed[:-1], expected[:-1]
    p_value = stats.chisquare(observed, expected).pvalue
    assert p_value > 1e-3, (p_value, list(zip(big, observed, expected))[:10])


@pytest.mark.parametrize("kind", ["byte_level", "byte_fallback"])
def test_greedy_writes_the_most_probable_token_not_the_largest_byte_marginal(kind):
    """One member at weight 1: a greedy round is the member's most probable token (grouped by bytes)."""
    member = tiny_member(kind, seed=5)
    ens = Ensemble([member], mode="chared", token_healing=False)
    for prompt in ("Tom has", "Emoji: ", "def add(a, b):\n"):
        want = expected_first_token_distribution(member, prompt, 1.0)
        best = max(want, key=want.get)
        run = Generation(ens, prompt, ens.config.replace(max_new_chars=10_000))
        for _ in run.steps.step():
            pass
        got = "EOS" if run.finish == "eos" and not run.steps.round_bytes else run.steps.round_bytes[0]
        assert got == best, (prompt, got, best)


def test_greedy_is_deterministic(bl, bf):
    ens = Ensemble([bl, bf], weights=[0.3, 0.7])
    a = ens.generate("Question: what is 12 + 30?", max_new_chars=40)
    b = ens.generate("Question: what is 12 + 30?", max_new_chars=40)
    assert a.text == b.text and a.rounds == b.rounds and a.text


def test_same_seed_same_sample_and_seeds_differ(bl, bf):
    ens = Ensemble([bl, bf])
    runs = [ens.generate("Café", max_new_chars=30, temperature=1.0, seed=s).text for s in (7, 7, 8, 9)]
    assert runs[0] == runs[1]
    assert len(set(runs)) >= 2


def test_output_is_always_valid_utf8_across_families(bl, bf):
    ens = Ensemble([bl, bf])
    for seed in range(25):
        result = ens.generate("Emoji: 😀 你好", max_new_chars=25, temperature=1.3, seed=seed)
        assert "".join(result.rounds).startswith(result.text)
        assert result.text.encode("utf-8").decode("utf-8") == result.text
        assert "\ufffd" not in result.text


def test_scripted_member_stops_at_eos_with_the_whole_script():
    ens = Ensemble([scripted_member("Hello 😀 world, 你好!")], token_healing=False)
    result = ens.generate("Say:", max_new_chars=100)
    assert result.text == "Hello 😀 world, 你好!" and result.finish_reason == "eos"
    assert "".join(result.rounds) == result.text


def test_two_families_agreeing_reproduce_the_script():
    script = "def add(a, b):\n    return a + b  # 😀"
    ens = Ensemble([scripted_member(script, "a"), scripted_member(script, "b", kind="byte_fallback")], token_healing=False)
    result = ens.generate("x", max_new_chars=200)
    assert result.text == script and result.finish_reason == "eos"
    assert set(result.stats.forward_passes) == {"a", "b"}


def test_stop_string_ends_the_text_before_it():
    ens = Ensemble([scripted_member("The answer is 8.\nQuestion: next")], token_healing=False)
    result = ens.generate("Q", max_new_chars=100, stop=["\nQuestion:", "zzz"])
    assert result.text == "The answer is 8." and result.finish_reason == "stop"


def test_stream_holds_back_a_possible_stop_and_matches_generate():
    ens = Ensemble([scripted_member("abc STOP def")], token_healing=False)
    chunks = list(ens.stream("Q", max_new_chars=100, stop=["STOP"]))
    assert "".join(chunks) == ens.generate("Q", max_new_chars=100, stop=["STOP"]).text == "abc "
    assert not any("S" in c for c in chunks)
    stream = ens.start_stream("Q", max_new_chars=100)
    assert "".join(stream) == "abc STOP def" and stream.result.finish_reason == "eos"


def test_length_counts_characters_not_bytes():
    ens = Ensemble([scripted_member("😀😀😀😀😀😀")], token_healing=False)
    result = ens.generate("Q", max_new_chars=4)
    assert result.text == "😀😀😀😀" and result.finish_reason == "length" and result.stats.chars == 4


def test_zero_weight_member_runs_no_forward_pass(bl, bf):
    alone = Ensemble([bl]).generate("Tom has", max_new_chars=20)
    paired = Ensemble([bl, bf], weights=[1.0, 0.0]).generate("Tom has", max_new_chars=20)
    assert paired.text == alone.text
    assert bf.name not in paired.stats.forward_passes


def test_member_without_mass_abstains_and_the_other_decides():
    """Scripts diverge after "ab": the favoured member writes its text, the other abstains in-round."""
    ens = Ensemble([scripted_member("abcdef", "x"), scripted_member("abXYZ", "y")], weights=[0.9, 0.1], token_healing=False)
    assert ens.generate("Q", max_new_chars=6).text == "abcdef"


def test_stats_count_forward_passes_and_tokens(bl, bf):
    result = Ensemble([bl, bf], mode="chared", token_healing=False).generate("Tom has 3 apples", max_new_chars=30)
    st = result.stats
    assert st.rounds == len(result.rounds) or result.finish_reason != "eos"
    for name in (bl.name, bf.name):
        # A round a search opened to finish a half-written character may be reused (cache hit).
        assert st.rounds <= st.forward_passes[name] <= st.rounds + st.search_rounds
        assert st.tokens_fed[name] >= st.prompt_tokens[name] + st.rounds - 1
    assert st.wall_time_s > 0 and st.chars == len(result.text)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(weights=[-1, 2]), "weight 0 is -1.0; weights must be >= 0"),
        (dict(weights=[float("nan"), 1]), "weight 0 must be finite, not nan"),
        (dict(weights=[0, 0]), "all zero"),
        (dict(weights=[1]), "got 1 weights \\[1.0\\] for 2 members"),
        (dict(mode="beam"), "mode is 'beam': Input should be 'chared' or 'exact'"),
        (dict(rule="max"), "rule is 'max': Input should be 'mixture', 'product' or 'adaptive'"),
    ],
)
def test_bad_ensemble_config_is_refused(bl, bf, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Ensemble([bl, bf], **kwargs)


def test_no_members_and_wrong_member_types_are_refused(bl):
    with pytest.raises(ConfigError, match="at least one member"):
        Ensemble([])
    with pytest.raises(ConfigError, match="member 0 is a str; pass Member objects"):
        Ensemble(["smollm2"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_chars=0), "max_new_chars is 0"),
        (dict(max_new_chars=-5), "max_new_chars is -5"),
        (dict(temperature=-0.1), "temperature is -0.1"),
        (dict(top_p=0.0), "top_p is 0.0"),
        (dict(top_p=1.5), "top_p is 1.5"),
        (dict(stop=[""]), "stop string '' is invalid"),
    ],
)
def test_bad_generation_arguments_are_refused(bl, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Ensemble([bl]).generate("hi", **kwargs)


def test_top_p_keeps_only_the_head(bl):
    ens = Ensemble([bl])
    outs = {ens.generate("Tom", max_new_chars=1, temperature=1.0, top_p=1e-6, seed=s).text for s in range(10)}
    greedy = ens.generate("Tom", max_new_chars=1).text
    assert outs == {greedy}


def test_a_member_continues_from_its_own_token_not_the_canonical_split():
    """Prompt "Tom ha", the round writes "s": the member then sees [..." ha", "s"], the tokens it
    wrote, not the canonical [..." has"] (a split it would never have written itself)."""
    from chared_flows.decoding import MemberAssets
    from tests.fixtures.tiny import ScriptedRunner, tokenizer_for

    tok = tokenizer_for("byte_level")
    seen: list[list[int]] = []

    class Recording(ScriptedRunner):
        def next_logits(self, token_ids):
            seen.append(list(token_ids))
            return super().next_logits(token_ids)

    holder: dict = {}
    assets = MemberAssets.build(
        "rec", tok, lambda: Recording(holder["a"].vocab, b"s", tok.eos_token_id, len(tok)), num_rows=len(tok)
    )
    holder["a"] = assets
    from chared_flows.decoding import Member

    member = Member(assets)
    own = member.encode("Tom ha") + [member.encode("s", add_special_tokens=False)[0]]
    canonical = member.encode("Tom has")
    assert own != canonical  # the case this test is about
    result = Ensemble([member], mode="chared", token_healing=False).generate("Tom ha", max_new_chars=5)
    assert result.text == "s" and result.finish_reason == "eos"
    assert seen[-1] == own
    # Scoring follows the same states: the text is certain under the scripted member.
    assert Ensemble([member], mode="chared", token_healing=False).score("Tom ha", "s").total_bits < 1e-6
