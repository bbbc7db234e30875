import pytest
import torch

from chared_flows.decoding import Member
from chared_flows.decoding.backends.protocol import common_prefix_len
from chared_flows.decoding.backends.transformers import CachedRunner, UncachedRunner
from chared_flows.errors import ContextWindowError
from tests.fixtures.tiny import PAD_ROWS, byte_fallback_tokenizer, byte_level_tokenizer, tiny_member, tiny_model


def sequences_that_rewrite_their_tail():
    """Token sequences as rounds produce them: grow, rewrite the last tokens, shrink, jump."""
    base = list(range(3, 23))
    return [
        base[:5],
        base[:6],
        base[:6],  # identical: served from the cache with no forward pass
        base[:4] + [40, 41],  # last two tokens re-tokenized
        base[:4] + [40, 41, 42, 43, 44, 45, 46, 47, 48, 49],  # beyond the sliding window (6)
        base[:4] + [40, 41, 42, 43, 44, 45, 46, 47, 48],  # a prefix of what is cached
        base[:12],
        [7],
    ]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_cached_runner_gives_the_same_logits_as_full_passes(arch):
    model = tiny_model(120, seed=3, arch=arch)
    cached, reference = CachedRunner(model), UncachedRunner(model)
    for ids in sequences_that_rewrite_their_tail():
        torch.testing.assert_close(cached.next_logits(ids), reference.next_logits(ids), rtol=1e-4, atol=1e-5)
    assert cached.forward_passes == len(sequences_that_rewrite_their_tail()) - 1
    assert cached.cache_rebuilds == 0  # every rollback, past the sliding window too, was a slice
    # Only new tokens are fed: far fewer than the full passes.
    assert cached.tokens_fed < reference.tokens_fed


def test_cached_runner_feeds_only_the_new_suffix():
    runner = CachedRunner(tiny_model(60, seed=1))
    runner.next_logits([1, 2, 3, 4])
    runner.next_logits([1, 2, 3, 4, 5, 6])
    assert runner.tokens_fed == 4 + 2
    runner.next_logits([1, 2, 3, 9])
    assert runner.tokens_fed == 6 + 1


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_snapshots_are_copy_on_write(arch):
    """A snapshot stays valid while the runner (or another runner) moves on from it."""
    model = tiny_model(120, seed=4, arch=arch)
    runner, other, reference = CachedRunner(model), CachedRunner(model), UncachedRunner(model)
    base = [3, 4, 5, 6, 7, 8, 9, 10]  # longer than the sliding window (6)
    runner.next_logits(base)
    snap = runner.snapshot()
    runner.next_logits(base + [11, 12])  # writes after the snapshot
    runner.next_logits(base[:3] + [30])  # rolls back below it
    for target, child in ((other, base + [40]), (runner, base + [41, 42])):
        target.restore(snap)
        fed = target.tokens_fed
        torch.testing.assert_close(target.next_logits(child), reference.next_logits(child), rtol=1e-4, atol=1e-5)
        assert target.tokens_fed - fed == len(child) - len(base)  # only the new tokens
    assert runner.cache_rebuilds == other.cache_rebuilds == 0


def test_common_prefix_len():
    assert common_prefix_len([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len([1, 2], [1, 2, 3]) == 2


def test_raw_prompt_without_chat_template():
    member = tiny_member("byte_fallback").with_chat(True)  # no template: raw text
    assert member.render("Hi") == ("Hi", True)


def test_chat_template_renders_a_user_turn():
    tok = byte_level_tokenizer()
    tok.chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    member = Member.from_pretrained(tiny_model(len(tok) + PAD_ROWS), tok, name="chatty", chat=True)
    try:
        assert member.render("2+3?") == ("<|user|>2+3?\n<|assistant|>", False)
        assert member.with_chat(False).render("2+3?") == ("2+3?", True)
    finally:
        tok.chat_template = None


def test_prompt_longer_than_the_window_names_member_and_excess():
    member = tiny_member("byte_level", name="small-window")
    session = member.open_session("The quick brown fox. " * 200)
    with pytest.raises(ContextWindowError, match=r"member 'small-window'.*window is 512.*tokens too many"):
        session.ids.check_prompt_fits()


def test_empty_prompt_starts_from_bos_or_eos():
    for kind, tok in (("byte_level", byte_level_tokenizer()), ("byte_fallback", byte_fallback_tokenizer())):
        session = tiny_member(kind).open_session("")
        ids = session.ids.token_ids(b"")
        assert len(ids) == 1 and ids[0] in (tok.bos_token_id, tok.eos_token_id)
        assert session.ids.token_ids(b"ab")[0] == ids[0]


def test_incomplete_tail_is_fed_as_single_byte_tokens():
    member = tiny_member("byte_fallback")
    session = member.open_session("x")
    ids = session.ids.token_ids("é".encode() + b"\xf0\x9f")
    vocab = member.assets.vocab
    assert [vocab.token_bytes(i) for i in ids[-2:]] == [b"\xf0", b"\x9f"]


def test_messages_use_each_members_template_or_a_plain_transcript():
    tok = byte_level_tokenizer()
    tok.chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"},
                {"role": "assistant", "content": "5"}, {"role": "user", "content": "and 2+4?"}]
    try:
        templated = Member.from_pretrained(tiny_model(len(tok) + PAD_ROWS), tok, name="chatty")
        text, add_special = templated.render(messages)
        assert text.endswith("<|user|>and 2+4?\n<|assistant|>") and not add_special
    finally:
        tok.chat_template = None
    plain = tiny_member("byte_fallback")
    assert plain.render(messages) == ("System: Be brief.\n\nUser: 2+3?\n\nAssistant: 5\n\nUser: and 2+4?\n\nAssistant:", True)


def test_malformed_messages_are_refused():
    from chared_flows.errors import ConfigError

    member = tiny_member("byte_level")
    with pytest.raises(ConfigError, match="message 0 .*role"):
        member.render([{"role": "robot", "content": "hi"}])
    with pytest.raises(ConfigError, match="empty"):
        member.render([])


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_batched_passes_give_each_sequence_its_own_logits(arch):
    """One batched forward over sequences of different lengths and rollbacks = each sequence alone.

    Gemma-3's sliding window is 6 here, so most sequences reach past it: padding that
    moved a token's distance to the others would change the sliding layers' logits.
    """
    from chared_flows.decoding.backends.transformers import TransformersBackend

    model = tiny_model(120, seed=7, arch=arch)
    backend, reference = TransformersBackend(model), UncachedRunner(model)
    runners = [backend.new_runner() for _ in range(4)]
    steps = [
        [[3, 4, 5], [9, 8, 7, 6, 5, 4, 3, 2], [11], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]],  # prefills (alone)
        [[3, 4, 5, 6], [9, 8, 7, 6, 5, 4, 3, 2, 40], [11, 12], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]],
        [[3, 4, 5, 6, 7], [9, 8, 7, 6, 5, 4, 3, 2, 40, 41], [11, 12, 13, 14], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]],
        [[3, 4, 50, 51], [9, 8, 7, 6, 5, 4, 3, 2, 40, 41, 42], [11, 12, 13, 14, 15], [3, 4, 5, 6, 7, 8, 9, 10, 60]],
        [[3, 4, 50, 51, 52], [9, 8, 7, 6, 5, 4, 3, 2, 40, 41, 42, 43], [11, 12, 13, 14, 15, 16], [3, 4, 5, 6, 7, 8, 9, 10, 60, 61]],
    ]
    for ids in steps:
        got = backend.next_logits_batch(runners, ids)
        for seq, logits in zip(ids, got):
            torch.testing.assert_close(logits, reference.next_logits(seq), rtol=1e-4, atol=1e-4)
    # The caches left behind by a batch serve single calls and snapshots correctly too.
    snap = runners[1].snapshot()
    longer = steps[-1][1] + [44, 45]
    torch.testing.assert_close(runners[1].next_logits(longer), reference.next_logits(longer), rtol=1e-4, atol=1e-4)
    runners[0].restore(snap)
    other = steps[-1][1] + [46]
    torch.testing.assert_close(runners[0].next_logits(other), reference.next_logits(other), rtol=1e-4, atol=1e-4)
    assert all(r.cache_rebuilds == 0 for r in runners)


def test_a_failed_pass_leaves_the_runner_consistent():
    """A pass that raises (an out-of-memory error) after a rollback: the next call is still exact."""
    model = tiny_model(120, seed=9)
    runner, reference = CachedRunner(model), UncachedRunner(model)
    runner.next_logits([3, 4, 5, 6, 7, 8])
    forward = model.forward

    def failing(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    model.forward = failing
    with pytest.raises(RuntimeError, match="out of memory"):
        runner.next_logits([3, 4, 5, 9])  # rolls the cache back to 3 positions, then fails
    model.forward = forward
    torch.testing.assert_close(runner.next_logits([3, 4, 5, 6]), reference.next_logits([3, 4, 5, 6]),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["byte_level", "byte_fallback"])
def test_a_member_cut_by_another_continues_its_own_history(kind):
    """A round another member ended inside this member's token: the new text's tokens are added to
    the member's own ids; the tokens it wrote in earlier rounds are never rewritten."""
    member = tiny_member(kind)
    session = member.open_session("Tom")
    base = session.ids.token_ids(b"") + member.encode(" ha", add_special_tokens=False)
    session.ids._own[b" ha"] = list(base)  # rounds so far: "Tom" + " ha" (its own tokens)
    session.ids.follow(b" ha", b"s 3", None)  # the next round, cut by another member
    ids = session.ids.token_ids(b" has 3")
    assert ids[: len(base)] == base  # history kept: no canonical merge of " ha" + "s"
    assert b"".join(member.assets.vocab.tokens[i] for i in ids[len(base):]) == b"s 3"
    session.ids.follow(b" has 3", b"\xf0\x9f", None)  # half an emoji: single-byte tokens
    assert session.ids.token_ids(b" has 3\xf0\x9f")[: len(ids)] == ids
