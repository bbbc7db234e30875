"""The served member against a real HTTP server process (the stand-in in tests/support/logprob_server.py).

The stand-in serves the same tiny model as the tests build here, so a served
member must give exactly what the in-process model seen through a top-k
window gives. Failure modes: server down, slow server, 503s, killed mid-run.
"""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch

from chared_flows.decoding import Ensemble, Member, MemberAssets
from chared_flows.decoding.backends.served import ServedBackend, parse_llama_cpp, parse_openai
from chared_flows.decoding.backends.specs import parse_served
from chared_flows.decoding.backends.topk import TopKBackend
from chared_flows.decoding.backends.transformers import TransformersBackend
from chared_flows.errors import BackendError, ConfigError
from tests.fixtures.tiny import PAD_ROWS, byte_level_tokenizer, tiny_member, tiny_model
from tests.support.servers import free_port, standin

SEED = 2
ROWS = len(byte_level_tokenizer()) + PAD_ROWS
IDS = [[5, 17, 33], [5, 17, 33, 40], [5, 17, 2], [9]]


@pytest.fixture(scope="module")
def reference():
    return TransformersBackend(tiny_model(ROWS, seed=SEED))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    with standin(port, tmp_path_factory.mktemp("standin") / "log", "--seed", str(SEED)):
        yield f"http://127.0.0.1:{port}"


def served_member(backend: ServedBackend, name: str = "served") -> Member:
    return Member(MemberAssets.build(name, byte_level_tokenizer(), backend, num_rows=ROWS, source=backend.url))


def topk_member(reference, k: int, name: str = "topk") -> Member:
    return Member(MemberAssets.build(name, byte_level_tokenizer(), TopKBackend(reference, k), num_rows=ROWS))


@pytest.mark.parametrize("api", ["openai", "llama_cpp"])
def test_served_logits_equal_the_models_top_k(server, reference, api):
    backend = ServedBackend(server, api=api, top_k=7, num_rows=ROWS, rest="drop")
    runner, truth = backend.new_runner(), TopKBackend(reference, 7, rest="drop").new_runner()
    for ids in IDS:
        got, want = runner.next_logits(ids), truth.next_logits(ids)
        assert torch.isfinite(got).sum() == 7
        assert torch.equal(torch.isfinite(got), torch.isfinite(want))
        torch.testing.assert_close(got[torch.isfinite(got)], want[torch.isfinite(want)], atol=1e-5, rtol=0)
    assert runner.forward_passes == len(IDS)
    runner.next_logits(IDS[-1])  # a repeated call is answered from the runner, not the server
    assert runner.forward_passes == len(IDS)
    assert backend.model == ("tiny" if api == "openai" else None)  # the openai API found the model's name


@pytest.mark.parametrize("api", ["openai", "llama_cpp"])
def test_greedy_chared_text_with_a_served_member_is_the_top_k_members(server, reference, api):
    other = tiny_member("byte_fallback", seed=5)
    served = served_member(ServedBackend(server, api=api, top_k=20, num_rows=ROWS))
    local = topk_member(reference, 20)
    for mode in ("chared", "exact"):
        a = Ensemble([served, other], weights=[0.5, 0.5], mode=mode).generate("Tom has", max_new_chars=12)
        b = Ensemble([local, other], weights=[0.5, 0.5], mode=mode).generate("Tom has", max_new_chars=12)
        assert a.text == b.text and a.text


def test_batch_runs_requests_concurrently_in_order_and_bounded(server, reference, monkeypatch):
    backend = ServedBackend(server, api="llama_cpp", top_k=5, num_rows=ROWS, concurrency=2)
    in_flight, peak, lock = [0], [0], threading.Lock()
    original = backend._request

    def counting(*args):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            time.sleep(0.05)  # hold the slot so that overlap is visible
            return original(*args)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(backend, "_request", counting)
    ids = [[5, 17, 33 + i] for i in range(6)]
    runners = [backend.new_runner() for _ in ids]
    got = backend.next_logits_batch(runners, ids)
    truth = TopKBackend(reference, 5)
    for logits, seq in zip(got, ids):
        want = truth.new_runner().next_logits(seq)
        torch.testing.assert_close(logits[torch.isfinite(logits)], want[torch.isfinite(want)], atol=1e-5, rtol=0)
    assert peak[0] == 2


def test_server_down_is_one_clear_line_and_changes_nothing(tmp_path, reference):
    port = free_port()  # nothing listens there
    backend = ServedBackend(f"http://127.0.0.1:{port}", api="llama_cpp", top_k=5, num_rows=ROWS, retries=1, backoff=0.01,
                            rest="drop")
    runner = backend.new_runner()
    with pytest.raises(BackendError) as err:
        runner.next_logits([5, 17])
    message = str(err.value)
    assert "\n" not in message and f"http://127.0.0.1:{port}" in message and "failed 2 tries" in message
    assert "llama-server -m MODEL.gguf" in message and "refused" in message.lower()
    assert runner.forward_passes == 0 and runner.snapshot() == ((), None)
    with standin(port, tmp_path / "log", "--seed", str(SEED)):  # start it: the same runner goes on
        assert torch.isfinite(runner.next_logits([5, 17])).sum() == 5


def test_slow_server_times_out_then_the_retry_succeeds(tmp_path):
    port = free_port()
    with standin(port, tmp_path / "log", "--seed", str(SEED), "--delay-first", "3"):
        backend = ServedBackend(f"http://127.0.0.1:{port}", api="llama_cpp", top_k=5, num_rows=ROWS,
                                timeout=1.0, retries=2, backoff=0.01, rest="drop")
        assert torch.isfinite(backend.new_runner().next_logits([5, 17])).sum() == 5
        strict = ServedBackend(f"http://127.0.0.1:{port}", api="llama_cpp", top_k=5, num_rows=ROWS,
                               timeout=1.0, retries=0)
        assert strict.new_runner().next_logits([5, 18]) is not None  # only the first request was slow


def test_slow_server_without_retries_names_the_timeout(tmp_path):
    port = free_port()
    with standin(port, tmp_path / "log", "--seed", str(SEED), "--delay-first", "3"):
        backend = ServedBackend(f"http://127.0.0.1:{port}", api="llama_cpp", top_k=5, num_rows=ROWS, timeout=1.0, retries=0)
        with pytest.raises(BackendError, match=r"failed 1 try in .*\(timed out\)"):
            backend.new_runner().next_logits([5, 17])


def test_503_while_loading_is_retried(tmp_path):
    port = free_port()
    with standin(port, tmp_path / "log", "--seed", str(SEED), "--fail-first", "2"):
        backend = ServedBackend(f"http://127.0.0.1:{port}", api="llama_cpp", top_k=5, num_rows=ROWS, retries=2, backoff=0.01,
                                rest="drop")
        assert torch.isfinite(backend.new_runner().next_logits([5, 17])).sum() == 5
    with standin(port, tmp_path / "log", "--seed", str(SEED), "--fail-first", "5"):
        backend = ServedBackend(f"http://127.0.0.1:{port}", api="llama_cpp", top_k=5, num_rows=ROWS, retries=1, backoff=0.01)
        with pytest.raises(BackendError, match="HTTP 503: Loading model"):
            backend.new_runner().next_logits([5, 17])


def test_bad_request_is_not_retried_and_says_why(server):
    backend = ServedBackend(server, api="openai", top_k=50, num_rows=ROWS, retries=3, backoff=5)
    start = time.monotonic()
    with pytest.raises(BackendError, match="HTTP 400: Requested sample logprobs of 50, which is greater than max allowed: 20"):
        backend.new_runner().next_logits([5, 17])
    assert time.monotonic() - start < 5  # no backoff sleep: a 4xx is final


def test_server_killed_mid_run_loses_nothing(tmp_path, reference):
    """Kill the server during a generation: one clear error; a rerun on a new server gives the same text."""
    other = tiny_member("byte_fallback", seed=5)
    expected = Ensemble([topk_member(reference, 20), other], weights=[0.5, 0.5]).generate("Tom has", max_new_chars=16)
    port = free_port()
    backend = ServedBackend(f"http://127.0.0.1:{port}", api="llama_cpp", top_k=20, num_rows=ROWS, retries=1, backoff=0.05)
    member = served_member(backend)
    calls = [0]
    original = backend.top_logprobs

    with standin(port, tmp_path / "log", "--seed", str(SEED)) as proc:
        def killing(ids):
            calls[0] += 1
            if calls[0] == 4:
                from tests.support.servers import stop

                stop(proc)  # the server dies between two requests of the run
            return original(ids)

        backend.top_logprobs = killing
        with pytest.raises(BackendError) as err:
            Ensemble([member, other], weights=[0.5, 0.5]).generate("Tom has", max_new_chars=16)
    assert "\n" not in str(err.value) and f"127.0.0.1:{port}" in str(err.value)
    backend.top_logprobs = original
    with standin(port, tmp_path / "log", "--seed", str(SEED)):  # restarted: the same member runs again
        again = Ensemble([member, other], weights=[0.5, 0.5]).generate("Tom has", max_new_chars=16)
    assert again.text == expected.text and len(again.text) > 5


def test_spec_loads_a_served_member(server, tmp_path):
    byte_level_tokenizer().save_pretrained(tmp_path / "tok")
    member = Member.load(f"served:{server}?api=openai&tokenizer={tmp_path / 'tok'}&top_k=5&timeout=10",
                         cache_dir=str(tmp_path / "cache"))
    assert member.assets.backend.identity() == {
        "kind": "served", "api": "openai", "url": server, "model": "", "top_k": 5, "rest": "spread"}
    assert Ensemble([member]).generate("Tom has", max_new_chars=4).text


@pytest.mark.parametrize("spec, message", [
    ("served:http://127.0.0.1:1", "needs tokenizer=SPEC"),
    ("served:http://127.0.0.1:1?tokenizer=x&topk=5", "option 'topk' .* is unknown"),
    ("served:http://127.0.0.1:1?tokenizer=x&top_k=many", "top_k='many' .* is not an integer"),
    ("served:127.0.0.1:1?tokenizer=x", "'127.0.0.1:1' is not an http"),
])
def test_bad_served_specs_name_the_value_and_the_fix(spec, message):
    with pytest.raises(ConfigError, match=message):
        Member.load(spec)


def test_served_spec_options():
    url, tokenizer, kwargs = parse_served("served:http://h:8000/v?api=openai&tokenizer=org/tok&top_k=20&timeout=2.5")
    assert (url, tokenizer, kwargs) == ("http://h:8000/v", "org/tok", {"api": "openai", "top_k": 20, "timeout": 2.5})
    assert parse_served("served:http://h:8080?tokenizer=t&top_k=all")[2] == {"top_k": "all"}


def test_a_reply_held_back_at_a_partial_utf8_character_is_asked_again_with_a_grammar(tmp_path, reference):
    # Real llama-server (built here): after "Weekend plans " + the first bytes of an emoji the
    # greedy token is another partial byte and the reply had no completion_probabilities, so
    # served exact scoring of emoji and CJK text failed with a BackendError.
    port = free_port()
    with standin(port, tmp_path / "log", "--seed", str(SEED), "--hold-partial"):
        backend = ServedBackend(f"http://127.0.0.1:{port}", api="llama_cpp", top_k=7, num_rows=ROWS, rest="drop")
        runner, truth = backend.new_runner(), TopKBackend(reference, 7, rest="drop").new_runner()
        for ids in IDS:
            got, want = runner.next_logits(ids), truth.next_logits(ids)
            torch.testing.assert_close(got[torch.isfinite(got)], want[torch.isfinite(want)], atol=1e-5, rtol=0)


def test_top_k_all_asks_for_the_whole_vocabulary_and_scores_as_the_full_model(server, reference):
    # Where rare tokens hide beyond the top 1000 (emoji, CJK, accents), only the whole
    # distribution scores within 0.01 bits/char (docs/performance.md): top_k=all fetches it.
    backend = ServedBackend(server, api="llama_cpp", top_k="all", num_rows=ROWS)
    assert backend.top_k == ROWS and backend.identity()["top_k"] == ROWS
    runner, truth = backend.new_runner(), reference.new_runner()
    for ids in IDS:
        got = torch.log_softmax(runner.next_logits(ids).double(), -1)
        want = torch.log_softmax(truth.next_logits(ids).double(), -1)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # every token its own probability, none spread
    text = "Caf\u00e9 \U0001F600 \u65e5\u672c"
    full = Ensemble([Member(MemberAssets.build("full", byte_level_tokenizer(), reference, num_rows=ROWS))],
                    mode="exact").score("", text)
    served = Ensemble([served_member(backend)], mode="exact").score("", text)
    assert served.total_bits == pytest.approx(full.total_bits, abs=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(api="sglang"), "api 'sglang' is not a supported"),
    (dict(top_k=0), "top_k is 0"),
    (dict(rest="uniform"), "rest 'uniform'"),
    (dict(timeout=0), "timeout is 0"),
    (dict(concurrency=0), "concurrency is 0"),
])
def test_bad_backend_options_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ServedBackend("http://127.0.0.1:8080", num_rows=10, **kwargs)


def test_parsers_read_the_documented_shapes_and_refuse_others():
    # llama-server README, /completion with n_probs (pre-sampling log-probs).
    reply = {"content": " x", "completion_probabilities": [{"id": 7, "logprob": -0.1, "token": " x", "bytes": [32, 120],
             "top_logprobs": [{"id": 7, "logprob": -0.1, "token": " x", "bytes": [32, 120]},
                              {"id": 9, "logprob": -2.5, "token": " y", "bytes": [32, 121]}]}]}
    assert parse_llama_cpp(reply) == ([7, 9], [-0.1, -2.5])
    # vLLM CompletionResponse with return_tokens_as_token_ids; -9999.0 is vLLM's -inf.
    reply = {"choices": [{"logprobs": {"tokens": ["token_id:7"], "token_logprobs": [-0.1],
             "top_logprobs": [{"token_id:7": -0.1, "token_id:9": -9999.0}], "text_offset": [0]}}]}
    ids, logprobs = parse_openai(reply)
    assert ids == [7, 9] and logprobs[0] == -0.1 and logprobs[1] == -math.inf
    with pytest.raises(BackendError, match="is it llama.cpp's llama-server"):
        parse_llama_cpp({"choices": []}, "http://x")
    with pytest.raises(BackendError, match="return_tokens_as_token_ids"):
        parse_openai({"choices": [{"logprobs": {"top_logprobs": [{" x": -0.1}]}}]}, "http://x")
