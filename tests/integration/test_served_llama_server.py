"""A served member against llama.cpp's real `llama-server` (built by `make setup-llamacpp`).

The server runs SmolLM2's GGUF file on 127.0.0.1 (a free port), in its own
process group, killed by group afterwards. The in-process llama.cpp backend
on the same file and the same llama.cpp source is the reference: seen through
the same top-k window, a served member must give the same next-token
distributions and the same greedy CharED text. Failure mode on the real
server: killed mid-run.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (extra `llamacpp`: make setup-llamacpp)")

from chared_flows.decoding import Ensemble, Member, MemberAssets  # noqa: E402
from chared_flows.decoding.backends.served import ServedBackend  # noqa: E402
from chared_flows.decoding.backends.specs import gguf_path  # noqa: E402
from chared_flows.decoding.backends.topk import TopKBackend  # noqa: E402
from chared_flows.decoding.backends.files import default_cache_dir  # noqa: E402
from chared_flows.errors import BackendError  # noqa: E402
from tests.support.servers import free_port, server, stop  # noqa: E402

pytestmark = pytest.mark.integration

K = 100
PROMPT = "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:"


def llama_server_binary() -> str | None:
    found = os.environ.get("LLAMA_SERVER") or shutil.which("llama-server", path=str(Path(sys.executable).parent))
    return found or shutil.which("llama-server")


BINARY = llama_server_binary()
if BINARY is None:
    pytest.skip("llama-server not found (make setup-llamacpp builds it into .venv/bin; or set LLAMA_SERVER)",
                allow_module_level=True)


def llama_server(port: int, log: Path):
    path = gguf_path("smollm2", default_cache_dir())
    cmd = [BINARY, "-m", str(path), "--host", "127.0.0.1", "--port", str(port), "-c", "8192", "-np", "4",
           "-t", "1", "--no-webui", "--no-warmup"]
    return server(cmd, port, log)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    port = free_port()
    with llama_server(port, tmp_path_factory.mktemp("llama-server") / "log"):
        ServedBackend(f"http://127.0.0.1:{port}", num_rows=1).wait_ready(120)
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def local():
    return Member.load("llama_cpp:smollm2")


def served(url: str, local: Member, **kwargs) -> Member:
    a = local.assets
    backend = ServedBackend(url, num_rows=len(a.vocab), top_k=K, **kwargs)
    return Member(MemberAssets.build("served-smollm2", a.tokenizer, backend, num_rows=len(a.vocab), source=url))


def topk_local(local: Member, **kwargs) -> Member:
    a = local.assets
    backend = TopKBackend(a.backend, K, **kwargs)
    return Member(MemberAssets.build("topk-smollm2", a.tokenizer, backend, num_rows=len(a.vocab)))


def test_served_top_k_equals_the_in_process_models(url, local):
    member, reference = served(url, local, rest="drop"), topk_local(local, rest="drop")  # compare what was sent
    ids = member.encode(PROMPT + " He has 8 apples.")
    runner, truth = member.assets.backend.new_runner(), reference.assets.backend.new_runner()
    for end in range(5, len(ids) + 1, 4):
        got, want = runner.next_logits(ids[:end]), truth.next_logits(ids[:end])
        top_got = set(torch.topk(got, 20).indices.tolist())
        top_want = set(torch.topk(want, 20).indices.tolist())
        assert len(top_got & top_want) >= 19  # near-ties at the 20th place may swap
        both = torch.isfinite(got) & torch.isfinite(want)
        assert int(both.sum()) >= K - 3
        assert float((got[both] - want[both]).abs().max()) < 0.05
        assert int(got.argmax()) == int(want.argmax())


def test_greedy_chared_with_a_served_member_equals_in_process(url, local):
    gemma = Member.load("llama_cpp:gemma3-270m")
    a = Ensemble([served(url, local), gemma], weights=[0.5, 0.5]).generate(PROMPT, max_new_chars=30, stop=["\n"])
    b = Ensemble([topk_local(local), gemma], weights=[0.5, 0.5]).generate(PROMPT, max_new_chars=30, stop=["\n"])
    assert a.text == b.text and a.text.strip()


def test_batched_requests_in_flight_together_give_the_sequential_answers(url, local):
    member = served(url, local, concurrency=4)
    backend = member.assets.backend
    texts = [PROMPT, "def add(a, b):", "The lighthouse keeper", "Café crème"]
    ids = [member.encode(t) for t in texts]
    batched = backend.next_logits_batch([backend.new_runner() for _ in ids], ids)
    for seq, got in zip(ids, batched):
        want = backend.new_runner().next_logits(seq)
        assert int(got.argmax()) == int(want.argmax())
        assert set(torch.topk(got, 10).indices.tolist()) == set(torch.topk(want, 10).indices.tolist())


def test_real_server_killed_mid_run_then_restarted_loses_nothing(local, tmp_path):
    gemma = Member.load("llama_cpp:gemma3-270m")
    port = free_port()
    member = served(f"http://127.0.0.1:{port}", local, retries=1, backoff=0.1)
    backend = member.assets.backend
    with llama_server(port, tmp_path / "log") as proc:
        backend.wait_ready(120)
        expected = Ensemble([member, gemma], weights=[0.5, 0.5]).generate(PROMPT, max_new_chars=20)
        original, calls = backend.top_logprobs, [0]

        def killing(ids):
            calls[0] += 1
            if calls[0] == 3:
                stop(proc)
            return original(ids)

        backend.top_logprobs = killing
        with pytest.raises(BackendError) as err:
            Ensemble([member, gemma], weights=[0.5, 0.5]).generate(PROMPT, max_new_chars=20)
        backend.top_logprobs = original
    message = str(err.value)
    assert "\n" not in message and f"http://127.0.0.1:{port}" in message and "llama-server -m MODEL.gguf" in message
    with llama_server(port, tmp_path / "log"):
        backend.wait_ready(120)
        again = Ensemble([member, gemma], weights=[0.5, 0.5]).generate(PROMPT, max_new_chars=20)
    assert again.text == expected.text


def test_a_greedy_token_inside_a_utf8_character_still_gives_probabilities(url, local):
    # After "Weekend plans " and an emoji's first bytes the greedy token is another partial
    # byte: llama-server holds it back and sent no probabilities (a BackendError before the
    # served member asked again with a grammar).
    member, reference = served(url, local, rest="drop"), topk_local(local, rest="drop")
    ids = member.encode("Weekend plans 🎉 and 今天天气很好")
    runner, truth = member.assets.backend.new_runner(), reference.assets.backend.new_runner()
    for end in range(2, len(ids) + 1):
        got, want = runner.next_logits(ids[:end]), truth.next_logits(ids[:end])
        assert int(got.argmax()) == int(want.argmax())
        both = torch.isfinite(got) & torch.isfinite(want)
        assert int(both.sum()) >= K - 3 and float((got[both] - want[both]).abs().max()) < 0.05
