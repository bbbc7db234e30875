"""Backend specs (llama_cpp:, served:) without models or servers: parsing and the missing extra."""

import sys

import pytest

from chared_flows.decoding import Member
from chared_flows.decoding.backends.specs import names_a_backend, parse_llama_cpp
from chared_flows.errors import ConfigError, MissingExtraError


def test_missing_llama_cpp_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    with pytest.raises(MissingExtraError, match=r"'llama_cpp' is not installed; install it with: pip install 'chared-flows\[llamacpp\]'"):
        Member.load("llama_cpp:smollm2", cache_dir=str(tmp_path))  # its own cache key: never loaded before


def test_llama_cpp_spec_parsing():
    assert parse_llama_cpp("llama_cpp:/m/x.gguf?n_ctx=8192&threads=2") == ("/m/x.gguf", {"n_ctx": 8192, "threads": 2})
    assert parse_llama_cpp("llama_cpp:smollm2") == ("smollm2", {})
    assert parse_llama_cpp("llama_cpp:smollm2?snapshot_seqs=0") == ("smollm2", {"snapshot_seqs": 0})
    with pytest.raises(ConfigError, match="names no model"):
        parse_llama_cpp("llama_cpp:?n_ctx=5")
    with pytest.raises(ConfigError, match="threads='two' .* is not an integer >= 1"):
        parse_llama_cpp("llama_cpp:smollm2?threads=two")
    assert parse_llama_cpp("llama_cpp:smollm2?state_copies=0&prefill=1") == (
        "smollm2", {"state_copies": 0, "prefill": 1})
    with pytest.raises(ConfigError, match="prefill='2' .* is not 0 or 1"):
        parse_llama_cpp("llama_cpp:smollm2?prefill=2")


def test_only_the_prefixes_name_a_backend():
    assert names_a_backend("llama_cpp:smollm2") and names_a_backend("served:http://h:1?tokenizer=x")
    assert not names_a_backend("smollm2") and not names_a_backend("org/llama_cpp") and not names_a_backend("x.gguf")
