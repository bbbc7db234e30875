"""The `auto` backend: GGUF specs go to llama.cpp where the binding imports, else transformers."""

from __future__ import annotations

import logging

import pytest

from chared_flows.decoding.backends import loading as models
from chared_flows.decoding.backends import auto
from chared_flows.decoding.backends.auto import choose_backend
from chared_flows.errors import ConfigError

YES, NO = (lambda: True), (lambda: False)


@pytest.mark.parametrize("spec", ["smollm2", "gemma3-270m", "/models/qwen2.5-0.5b.gguf"])
def test_auto_runs_gguf_models_on_llama_cpp_only_where_the_binding_imports(spec):
    assert choose_backend(spec, "auto", available=YES) == "llama_cpp"
    assert choose_backend(spec, "auto", available=NO) == "transformers"  # today's behaviour, unchanged


@pytest.mark.parametrize("spec", ["HuggingFaceTB/SmolLM2-135M", "/models/some-hf-dir"])
def test_auto_keeps_non_gguf_models_on_transformers(spec):
    assert choose_backend(spec, "auto", available=YES) == "transformers"


def test_auto_keeps_a_gpu_member_on_transformers():
    assert choose_backend("smollm2", "auto", device="cuda:0", available=YES) == "transformers"


def test_an_explicit_backend_or_prefix_wins():
    assert choose_backend("smollm2", "transformers", available=YES) == "transformers"
    assert choose_backend("smollm2", "llama_cpp", available=NO) == "llama_cpp"  # loading then says what is missing
    assert choose_backend("llama_cpp:smollm2", "transformers", available=NO) == "llama_cpp"
    assert choose_backend("served:http://127.0.0.1:8080?tokenizer=smollm2", "auto", available=YES) == "served"
    with pytest.raises(ConfigError, match="runs GGUF files"):
        choose_backend("org/name", "llama_cpp")
    with pytest.raises(ConfigError, match="unknown; use one of"):
        choose_backend("smollm2", "vllm")


def test_the_default_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(auto.ENV, "auto")
    assert choose_backend("smollm2", available=YES) == "llama_cpp"
    monkeypatch.setenv(auto.ENV, "transformers")
    assert choose_backend("smollm2", available=YES) == "transformers"
    monkeypatch.delenv(auto.ENV)
    assert choose_backend("smollm2", available=YES) == "llama_cpp"  # unset: auto
    monkeypatch.setenv(auto.ENV, "fast")
    with pytest.raises(ConfigError, match="CHARED_BACKEND='fast'"):
        choose_backend("smollm2")


def test_load_routes_the_choice_keeps_the_name_and_says_it_in_the_load_line(monkeypatch, tmp_path, caplog):
    """The selection seam: with the binding faked as installed, a plain alias loads through llama.cpp."""
    loaded = []

    class Assets:
        source = "smollm2 (SmolLM2.gguf)"

    def fake_backend_assets(spec, root, name=None):
        loaded.append((spec, name))
        return Assets()

    monkeypatch.setattr(auto, "llama_cpp_available", YES)
    monkeypatch.setattr(models, "load_backend_assets", fake_backend_assets)
    with caplog.at_level(logging.INFO, logger="chared_flows.models"):
        assets = models.load_assets("smollm2", cache_dir=str(tmp_path), backend="auto")
    assert isinstance(assets, Assets) and loaded == [("llama_cpp:smollm2", "smollm2")]
    assert "with llama_cpp (auto: the llama_cpp binding is installed)" in caplog.text


def test_the_policy_is_a_run_param(monkeypatch):
    from chared_flows.flow.runner import backend_policy
    from chared_flows.records import RunRecord
    from chared_flows.tracking.mlflow import run_params

    monkeypatch.setenv(auto.ENV, "auto")
    monkeypatch.setattr(auto, "llama_cpp_available", YES)
    assert backend_policy() == "auto: llama_cpp for GGUF"
    monkeypatch.setattr(auto, "llama_cpp_available", NO)
    assert backend_policy() == "auto: transformers (no llama_cpp binding)"
    monkeypatch.setenv(auto.ENV, "transformers")
    run = RunRecord("r1", "wf", 1, "t", 1, "h", "{}", [], backend=backend_policy())
    assert run_params(run)["backend"] == "transformers"
    assert RunRecord.from_dict(run.to_dict()).backend == "transformers"
