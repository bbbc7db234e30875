"""The transformers backend's CPU linear kernels (backends/cpu_linear.py): same numbers as stock, or stock."""

import pytest
import torch

from chared_flows.decoding import Ensemble, Member
from chared_flows.decoding.backends import cpu_linear
from chared_flows.decoding.backends.transformers import TransformersBackend, UncachedRunner
from tests.fixtures.tiny import PAD_ROWS, byte_level_tokenizer, tiny_model

pytestmark = pytest.mark.skipif(not cpu_linear._onednn_linear_available(), reason="this torch has no oneDNN linear")

SEQUENCES = [[3, 4, 5], [9, 8, 7, 6, 5, 4, 3, 2], [11, 12], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]]


def stock_logits(model, sequences):
    cpu_linear.uninstall(model)
    reference = UncachedRunner(model)
    return [reference.next_logits(ids) for ids in sequences]


def switched(model) -> list:
    return [m for m in model.modules() if type(m) is torch.nn.Linear and "forward" in m.__dict__]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_fast_kernels_give_stock_logits_alone_and_batched(arch):
    model = tiny_model(120, seed=5, arch=arch)
    want = stock_logits(model, SEQUENCES)
    backend = TransformersBackend(model)
    assert backend.linear_kernels == "onednn" and backend.identity()["linear_kernels"] == "onednn"
    output = model.get_output_embeddings()
    assert switched(model) == [output]  # the hidden layers keep their stock forward
    assert output._row_weight.shape == output.weight.shape[::-1] and output._row_weight.is_contiguous()
    alone = [UncachedRunner(model).next_logits(ids) for ids in SEQUENCES]  # one row at a time: the transposed copy
    runners = [backend.new_runner() for _ in SEQUENCES]
    backend.next_logits_batch(runners, [ids[:-1] for ids in SEQUENCES])
    batched = backend.next_logits_batch(runners, SEQUENCES)  # several rows: oneDNN
    for got_alone, got_batched, expected in zip(alone, batched, want):
        torch.testing.assert_close(got_alone, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_batched, expected, rtol=1e-4, atol=1e-4)
    cpu_linear.uninstall(model)
    assert switched(model) == [] and not hasattr(output, "_row_weight")


def test_exact_scores_agree_with_stock_kernels():
    tokenizer = byte_level_tokenizer()
    text = "Tom has 3 apples and 12 pears."

    def bits(linear: str, monkeypatch) -> float:
        monkeypatch.setenv(cpu_linear.ENV, linear)
        member = Member.from_pretrained(tiny_model(len(tokenizer) + PAD_ROWS, seed=2), tokenizer, name="tiny")
        assert member.assets.backend.linear_kernels == ("stock" if linear == "stock" else "onednn")
        return Ensemble([member], mode="exact").score("", text).bits_per_char

    with pytest.MonkeyPatch.context() as monkeypatch:
        stock, fast = bits("stock", monkeypatch), bits("", monkeypatch)
    assert fast == pytest.approx(stock, rel=1e-6)


def test_env_keeps_stock_kernels(monkeypatch):
    monkeypatch.setenv(cpu_linear.ENV, "stock")
    model = tiny_model(60, seed=1)
    assert TransformersBackend(model).linear_kernels == "stock" and switched(model) == []


def test_a_layer_that_disagrees_keeps_its_stock_forward(monkeypatch):
    model = tiny_model(60, seed=1)
    monkeypatch.setattr(cpu_linear, "_fast_forward", lambda self, x: torch.nn.functional.linear(x, self.weight) + 1.0)
    assert cpu_linear.install(model) == "stock"
    assert switched(model) == [] and not hasattr(model.get_output_embeddings(), "_row_weight")


def test_only_cpu_fp32_layers_are_switched():
    model = tiny_model(60, seed=1).to(torch.bfloat16)
    assert cpu_linear.install(model) == "stock" and switched(model) == []


def test_a_model_cast_after_install_falls_back_to_stock():
    model = tiny_model(60, seed=1)
    assert cpu_linear.install(model) == "onednn"
    model.to(torch.float64)
    runner = UncachedRunner(model)
    logits = runner.next_logits([3, 4, 5])
    cpu_linear.uninstall(model)
    torch.testing.assert_close(logits, UncachedRunner(model).next_logits([3, 4, 5]))
