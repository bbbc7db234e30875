"""A served member checks every reply and bounds every call: a bad or hung server is one line, never a wrong answer."""

from __future__ import annotations

import math
import socket

import pytest
import torch

from chared_flows.decoding.backends.served import ServedBackend, check_top
from chared_flows.decoding.backends.specs import parse_served
from chared_flows.errors import BackendError, ConfigError

ROWS = 50
URL = "http://127.0.0.1:9"


def llama_reply(top: list) -> dict:
    return {"completion_probabilities": [{"id": 0, "logprob": -0.1, "top_logprobs": top}]}


def backend_answering(reply, monkeypatch, **kwargs) -> ServedBackend:
    backend = ServedBackend(URL, api="llama_cpp", top_k=5, num_rows=ROWS, **kwargs)
    monkeypatch.setattr(backend, "_post", lambda path, body: reply)
    return backend


GOOD = [{"id": 3, "logprob": -0.5}, {"id": 7, "logprob": -1.5}]


@pytest.mark.parametrize("top, message", [
    ([{"id": ROWS + 3, "logprob": -0.5}], f"token id {ROWS + 3} outside the tokenizer's {ROWS} tokens"),
    ([{"id": -1, "logprob": -0.5}], "token id -1 outside"),
    ([{"id": 3, "logprob": float("nan")}], "log-prob nan for token 3"),
    ([{"id": 3, "logprob": float("inf")}], "log-prob inf for token 3"),
    ([{"id": 3, "logprob": 0.7}], "log-prob 0.7 for token 3"),
    ([{"id": 3, "logprob": -0.1}, {"id": 4, "logprob": -0.2}], r"summing to 1\.72\d\d > 1"),
    ([], "has no top-k entries"),
    ([{"id": i, "logprob": -5.0} for i in range(6)], "has 6 entries for top_k=5"),
    ([{"id": 3, "logprob": -1.0}, {"id": 3, "logprob": -2.0}], r"repeats a token id \(3\)"),
    ([{"id": 3}], "reply has no completion_probabilities"),  # a missing field
    ([{"id": 3.9, "logprob": -1.0}], "reply has no completion_probabilities"),  # int() would make it 3
    ([{"id": True, "logprob": -1.0}], "reply has no completion_probabilities"),
    ([{"id": 3, "logprob": "-1.0"}], "reply has no completion_probabilities"),
])
def test_a_bad_reply_is_one_line_naming_the_server_and_the_fault(top, message, monkeypatch):
    runner = backend_answering(llama_reply(top), monkeypatch).new_runner()
    with pytest.raises(BackendError, match=message) as err:
        runner.next_logits([1, 2])
    assert "\n" not in str(err.value) and URL in str(err.value)
    assert runner.forward_passes == 0 and runner.snapshot() == ((), None)  # nothing half-applied


def test_a_good_reply_still_passes(monkeypatch):
    logits = backend_answering(llama_reply(GOOD), monkeypatch).new_runner().next_logits([1, 2])
    assert logits[3].item() == pytest.approx(-0.5) and logits[7].item() == pytest.approx(-1.5)
    assert torch.isfinite(logits).all()  # "spread": the rest shares the missing mass


def test_openai_replies_are_checked_too(monkeypatch):
    reply = {"choices": [{"logprobs": {"top_logprobs": [{"token_id:3": -0.5, f"token_id:{ROWS}": -1.0}]}}]}
    backend = ServedBackend(URL, api="openai", model="m", top_k=5, num_rows=ROWS)
    monkeypatch.setattr(backend, "_post", lambda path, body: reply)
    with pytest.raises(BackendError, match=f"token id {ROWS} outside"):
        backend.new_runner().next_logits([1])
    # vLLM's -9999.0 is its -inf: a probability of 0, not an error
    reply = {"choices": [{"logprobs": {"top_logprobs": [{"token_id:3": -0.5, "token_id:4": -9999.0}]}}]}
    assert backend.new_runner().next_logits([1])[4].item() < -1  # spread mass, not -9999


def test_check_top_keeps_minus_infinity_and_rounding_of_zero():
    assert check_top([1, 2], [1e-6, -math.inf], num_rows=5, top_k=5) == ([1, 2], [1e-6, -math.inf])
    with pytest.raises(BackendError, match="2 token ids for 1 log-probs"):
        check_top([1, 2], [-1.0], num_rows=5, top_k=5)


@pytest.fixture()
def silent_server():
    """A socket that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_a_hung_server_is_cut_at_the_deadline_whatever_the_timeout_and_retries(silent_server):
    # Without a deadline this is 4 tries x 20 s; the deadline leaves time for one try only.
    backend = ServedBackend(silent_server, api="llama_cpp", top_k=5, num_rows=ROWS, timeout=20, retries=3,
                            backoff=0.01, deadline=1.0)
    with pytest.raises(BackendError) as err:
        backend.new_runner().next_logits([1, 2])
    message = str(err.value)
    assert "failed 1 try within its 1 s deadline" in message and "timed out" in message and "\n" not in message


def test_deadline_defaults_to_at_most_30_s_and_is_a_spec_option():
    backend = ServedBackend(URL, num_rows=ROWS)
    assert backend.deadline <= 30 and backend.timeout <= backend.deadline
    _url, _tok, kwargs = parse_served("served:http://h:1?tokenizer=t&deadline=2.5")
    assert kwargs == {"deadline": 2.5}
    with pytest.raises(ConfigError, match="served member option deadline='soon'"):
        parse_served("served:http://h:1?tokenizer=t&deadline=soon")
    for bad in (0, -1, float("nan"), float("inf"), True):
        with pytest.raises(ConfigError, match="deadline is"):
            ServedBackend(URL, num_rows=ROWS, deadline=bad)
