"""Resolving a model spec to loaded weights: embedded aliases, local dirs, GGUF files, hub ids.

GGUF files are dequantised by transformers on load (20-45 s, several GB of
RAM for Gemma's 262k-row embedding). We convert each file once into a
safetensors directory in the cache, keyed by the file's fingerprint, so
later loads take about a second and give identical logits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from chared_flows.decoding.backends.assets import MemberAssets, assets_for_model
from chared_flows.decoding.backends.files import EMBEDDED, converted_dir, default_cache_dir, looks_like_hub_id
from chared_flows.decoding.backends.specs import load_backend_assets, names_a_backend
from chared_flows.decoding.backends.gguf import check_gguf_file
from chared_flows.errors import ConfigError, ModelLoadError

_DTYPES = ("float32", "bfloat16", "float16")
log = logging.getLogger("chared_flows.models")
_LOADED: dict[tuple[str, str, str], MemberAssets] = {}
_LOCK = threading.Lock()


def load_assets(
    spec: str, *, cache_dir: str | os.PathLike | None = None, dtype: str = "float32", device: str = "cpu",
    backend: str | None = None,
) -> MemberAssets:
    """Load (once per process and device) the model and tokenizer a spec names, with its byte index.

    A spec prefixed `llama_cpp:` or `served:` picks that backend (backends/specs.py); a
    plain spec runs on `backend` (auto, transformers, llama_cpp; default $CHARED_BACKEND
    or auto: llama.cpp for GGUF models where installed, see backends/auto.py).
    `dtype` and `device` apply to the transformers backend only.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"model spec {spec!r} is empty; use an alias ({', '.join(EMBEDDED)}), a directory, a .gguf file or a hub id")
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported; use one of: {', '.join(_DTYPES)}")
    target = resolve_device(device)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    from chared_flows.decoding.backends.auto import choose_backend, why

    chosen = choose_backend(spec, backend, device=target)
    key = (spec, dtype, str(root), target, chosen)
    with _LOCK:
        if key not in _LOADED:
            started = time.perf_counter()
            if names_a_backend(spec):  # llama_cpp:SPEC, served:URL?tokenizer=SPEC (backends/specs.py)
                _LOADED[key] = load_backend_assets(spec, root)
                source = spec
            elif chosen == "llama_cpp":  # a GGUF model, by choice or by `auto` (backends/auto.py)
                _LOADED[key] = load_backend_assets(f"llama_cpp:{spec}", root, name=spec)
                source = _LOADED[key].source
            else:
                with quiet_transformers():
                    model, tokenizer, source = _load(spec, root, dtype)
                model = model.to(target)
                _LOADED[key] = assets_for_model(spec, model, tokenizer, source)
            log.info("loaded %s with %s from %s on %s in %.1f s", spec, why(spec, backend, chosen), source,
                     target, time.perf_counter() - started)
        return _LOADED[key]


def resolve_device(device: str) -> str:
    """'cpu', 'cuda', 'cuda:N', 'mps' or 'auto' (the first of cuda, mps, cpu that this machine has)."""
    import torch

    if not isinstance(device, str) or not re.fullmatch(r"cpu|mps|auto|cuda(:\d+)?", device):
        raise ConfigError(f"device {device!r} is not one of cpu, cuda, cuda:N, mps, auto")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r}: this torch has no CUDA device (torch {torch.__version__}); "
                                 "use device='cpu' or install a CUDA build of torch")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError("device 'mps': this machine has no Apple GPU; use device='cpu'")
    return device


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No per-tensor progress bars or load chatter from transformers while a model loads."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _load(spec: str, root: Path, dtype: str) -> tuple[Any, Any, str]:
    if spec in EMBEDDED:
        gguf = EMBEDDED[spec](root)
        return (*_load_dir(convert_gguf(gguf, root), dtype), f"{spec} ({gguf.name})")
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        return (*_load_dir(convert_gguf(check_gguf_file(path, spec), root), dtype), str(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"directory {spec!r} has no config.json; point to a Hugging Face model directory")
        return (*_load_dir(path, dtype), str(path))
    if looks_like_hub_id(spec):
        return (*_load_dir(spec, dtype), f"hub:{spec}")
    raise ModelLoadError(
        f"unknown model spec {spec!r}: not an embedded alias ({', '.join(EMBEDDED)}), "
        "an existing directory, a .gguf file, or a hub id like 'org/name' "
        "(or a backend: llama_cpp:SPEC, served:URL?tokenizer=SPEC)"
    )


def _torch_dtype(dtype: str) -> Any:
    import torch

    return getattr(torch, dtype)


def _load_dir(where: str | Path, dtype: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(where))
        model = AutoModelForCausalLM.from_pretrained(str(where), dtype=_torch_dtype(dtype))
    except OSError as exc:
        raise ModelLoadError(
            f"could not load model {str(where)!r}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}. "
            "Hub ids need network access to the hub or a local copy; offline, pass a local directory or .gguf file"
        ) from exc
    return model, tokenizer


def convert_gguf(path: Path, root: Path) -> Path:
    """Dequantise a GGUF file once into a safetensors directory under `root`; return that directory."""
    target = converted_dir(path, root)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=_torch_dtype("float32"))
    except Exception as exc:  # noqa: BLE001 - a damaged GGUF fails in the reader with any exception type
        raise ModelLoadError(
            f"could not read GGUF file {str(path)!r}: {exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0][:200]}; "
            "is the file complete and an architecture transformers can load?"
        ) from exc
    # Subtle: the GGUF quantizer would be saved with the weights and make every
    # reload dequantise again; the weights are already plain float tensors.
    model.hf_quantizer = None
    model.config.quantization_config = None
    # Write next to the target and rename: a crash never leaves a half directory behind.
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        publish_dir(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def publish_dir(staging: Path, target: Path) -> None:
    """Rename a finished `staging` directory to `target`, unless another process got there first.

    Subtle: two processes that convert the same file at once (Ray workers, parallel runs on a
    fresh cache) both finish a staging copy; the second rename finds a non-empty `target` and
    fails (ENOTEMPTY or EEXIST). Both copies are the same conversion, so the loser keeps the
    winner's and drops its own; any other failure is still an error.
    """
    try:
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
