"""Many prompts at once: batched forward passes give the same texts as decoding each alone."""

from __future__ import annotations

import threading

import pytest

from chared_flows.decoding import Ensemble, Member
from chared_flows.decoding.backends.scheduler import scheduler_for
from chared_flows.errors import ContextWindowError
from tests.fixtures.tiny import PAD_ROWS, tiny_model, tokenizer_for

PROMPTS = ["Tom has 3 apples", "def add(a, b):\n", "Café crème", "Emoji: 😀", "Question: what is 12 + 30?",
           "The quick brown fox", "for i in range(10):\n\t", "你好"]


def f64_member(kind: str, seed: int, arch: str = "llama") -> Member:
    """float64, so a batched matrix product and a single one agree far below any choice's margin."""
    tok = tokenizer_for(kind)
    model = tiny_model(len(tok) + PAD_ROWS, seed=seed, arch=arch).double()
    return Member.from_pretrained(model, tok, name=f"f64-{kind}-{arch}-{seed}")


@pytest.fixture(scope="module")
def pair():
    return [f64_member("byte_level", 0), f64_member("byte_fallback", 1, arch="gemma3")]


@pytest.mark.parametrize("mode", ["chared", "exact"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_texts_equal_one_at_a_time(pair, mode, temperature):
    ens = Ensemble(pair, weights=[0.6, 0.4], mode=mode)
    kwargs = dict(max_new_chars=25, temperature=temperature, seed=3)
    alone = [ens.generate(p, **kwargs) for p in PROMPTS]
    schedulers = [scheduler_for(m.assets.backend) for m in pair]
    before = [(s.batches, s.passes) for s in schedulers]
    batched = ens.generate_batch(PROMPTS, batch_size=8, **kwargs)
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.finish_reason for r in batched] == [r.finish_reason for r in alone]
    # The passes really met in batches: fewer batched calls than passes.
    for s, (batches, passes) in zip(schedulers, before):
        assert s.batches - batches < s.passes - passes


def test_stream_batch_chunks_join_to_the_batched_texts(pair):
    ens = Ensemble(pair, mode="chared")
    texts = [""] * len(PROMPTS)
    for index, chunk in ens.stream_batch(PROMPTS, max_new_chars=15):
        texts[index] += chunk
    assert texts == [r.text for r in ens.generate_batch(PROMPTS, max_new_chars=15)]


def test_concurrent_callers_in_threads_get_their_own_texts(pair):
    """LangChain's batch runs invokes in a thread pool: each caller's text is the one it would get alone."""
    ens = Ensemble(pair, mode="exact")
    alone = {p: ens.generate(p, max_new_chars=12).text for p in PROMPTS[:4]}
    got: dict = {}

    def call(prompt):
        got[prompt] = ens.generate(prompt, max_new_chars=12).text

    threads = [threading.Thread(target=call, args=(p,)) for p in PROMPTS[:4]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == alone


def test_a_bad_prompt_is_refused_before_any_decoding(pair):
    ens = Ensemble(pair)
    with pytest.raises(ContextWindowError, match="too many"):
        ens.generate_batch(["fine", "x " * 600], max_new_chars=5)


def test_a_failing_decoding_stops_the_batch_and_raises(pair):
    class Boom(RuntimeError):
        pass

    ens = Ensemble(pair, mode="chared")
    original = pair[0].assets.backend.next_logits_batch
    calls = {"n": 0}

    def failing(runners, ids):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Boom("the model failed")
        return original(runners, ids)

    pair[0].assets.backend.next_logits_batch = failing
    try:
        with pytest.raises(Boom, match="the model failed"):
            ens.generate_batch(PROMPTS, max_new_chars=20)
    finally:
        del pair[0].assets.backend.next_logits_batch
    assert [r.text for r in ens.generate_batch(PROMPTS[:2], max_new_chars=5)]  # still usable afterwards


def test_batch_size_and_prompt_list_are_checked(pair):
    ens = Ensemble(pair)
    with pytest.raises(Exception, match="batch_size is 0"):
        ens.generate_batch(["a"], batch_size=0)
    with pytest.raises(Exception, match="takes a list of prompts"):
        ens.generate_batch("a single string")


def test_a_suspended_stream_never_holds_other_decodings_up(pair):
    """A stream its caller stops iterating is no scheduler client between steps."""
    ens = Ensemble(pair, mode="chared")
    schedulers = [scheduler_for(m.assets.backend) for m in pair]
    suspended = ens.stream("Hello", max_new_chars=30)
    next(suspended)
    assert all(not s._clients for s in schedulers)  # nobody to wait for while it is suspended
    alone = ens.generate("The quick", max_new_chars=10).text
    assert alone == Ensemble(pair, mode="chared").generate("The quick", max_new_chars=10).text


def test_streams_interleaved_in_one_thread_each_get_their_own_text(pair):
    from chared_flows.decoding.backends import scheduler

    ens = Ensemble(pair, mode="chared")
    a, b = ens.stream("Tom has", max_new_chars=12), ens.stream("Café", max_new_chars=12)
    got = {"a": "", "b": ""}
    for pieces in zip(a, b):
        got["a"] += pieces[0]
        got["b"] += pieces[1]
    got["a"] += "".join(a)
    got["b"] += "".join(b)
    assert got == {"a": ens.generate("Tom has", max_new_chars=12).text, "b": ens.generate("Café", max_new_chars=12).text}
    assert getattr(scheduler._current, "client", None) is None


def test_closing_stream_batch_stops_the_other_decodings(pair):
    ens = Ensemble(pair, mode="chared")
    scheduler = scheduler_for(pair[0].assets.backend)
    before = scheduler.passes
    ens.generate_batch(PROMPTS, max_new_chars=40)
    full = scheduler.passes - before
    before = scheduler.passes
    chunks = ens.stream_batch(PROMPTS, max_new_chars=40)
    next(chunks)
    chunks.close()
    assert scheduler.passes - before < full / 2  # the others were cancelled, not run to the end
    assert not scheduler._clients


def test_a_pass_queued_ahead_waits_for_a_needed_one_and_a_cancelled_one_never_runs(pair):
    """eager=False passes do not start a batch on their own; they leave with the owner's next needed pass."""
    from chared_flows.decoding.backends.scheduler import Client, PassScheduler, bound, gather

    member = pair[0]
    scheduler = PassScheduler(member.assets.backend, linger_s=30.0)
    me = Client([scheduler])
    ran = []

    def finish(tag):
        return lambda logits: ran.append(tag) or tag

    ids = member.encode("Tom has 3")
    with bound(me):
        later = scheduler.submit(member.assets.backend.new_runner(), ids, finish("later"), eager=False)
        dropped = scheduler.submit(member.assets.backend.new_runner(), ids[:-1], finish("dropped"), eager=False)
        threading.Event().wait(0.3)
        assert ran == [] and scheduler.batches == 0  # the owner is not waiting: nothing ran
        dropped.cancel()
        now = scheduler.submit(member.assets.backend.new_runner(), ids[:-2], finish("now"))
        assert gather([(scheduler, now)]) == ["now"]
    assert later.result(timeout=5) == "later" and dropped.cancelled()
    assert sorted(ran) == ["later", "now"] and scheduler.batches == 1
