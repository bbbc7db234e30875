import pytest

from chared_flows.decoding import Ensemble, Member
from chared_flows.decoding.backends.loading import load_assets
from chared_flows.errors import ConfigError, ModelLoadError
from tests.fixtures.tiny import PAD_ROWS, byte_fallback_tokenizer, byte_level_tokenizer, tiny_model


@pytest.mark.parametrize(
    "spec, error, message",
    [
        ("no-such-model", ModelLoadError, "unknown model spec 'no-such-model'.*smollm2, gemma3-270m"),
        ("missing/file.gguf", ModelLoadError, "GGUF file 'missing/file.gguf' does not exist"),
        ("", ConfigError, "model spec '' is empty"),
    ],
)
def test_bad_specs_name_the_value_and_the_fix(spec, error, message):
    with pytest.raises(error, match=message):
        Member.load(spec)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        Member.load(str(tmp_path))


def test_unknown_dtype_is_refused():
    with pytest.raises(ConfigError, match="dtype 'int3' is not supported"):
        load_assets("smollm2", dtype="int3")


def test_local_directory_loads_once_and_is_shared(tmp_path):
    tok = byte_fallback_tokenizer()
    tiny_model(len(tok) + PAD_ROWS, seed=2).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    a = Member.load(str(tmp_path), cache_dir=str(tmp_path / "cache"))
    b = Member.load(str(tmp_path), chat=True, cache_dir=str(tmp_path / "cache"))
    assert a.assets is b.assets and b.chat and a.family == "sentencepiece"
    assert len(a.assets.vocab) == len(tok) + PAD_ROWS
    assert Ensemble([a, b]).generate("Tom has", max_new_chars=5).text


def test_hub_id_offline_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="could not load model 'nobody/nothing'.*offline, pass a local"):
        Member.load("nobody/nothing", cache_dir=str(tmp_path))


def test_device_choices_are_checked():
    from chared_flows.decoding.backends.loading import resolve_device
    from chared_flows.errors import ConfigError, ModelLoadError

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda", "mps")
    with pytest.raises(ConfigError, match="device 'gpu' is not one of cpu, cuda, cuda:N, mps, auto"):
        resolve_device("gpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA device"):
            resolve_device("cuda:1")


def test_a_model_loaded_on_a_device_decodes_there(tmp_path):
    """device='cpu' explicitly, and 'auto' (cpu here): the same text as the default load."""
    from chared_flows.decoding import Ensemble

    tok = byte_level_tokenizer()
    tiny_model(len(tok) + PAD_ROWS).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    texts = []
    for device in ("cpu", "auto"):
        member = Member.load(str(tmp_path / "m"), cache_dir=str(tmp_path / "cache"), device=device)
        assert member.assets.backend.identity()["device"].startswith(("cpu", "cuda", "mps"))
        texts.append(Ensemble([member]).generate("Tom has", max_new_chars=10).text)
    assert texts[0] == texts[1]
