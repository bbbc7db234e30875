"""Is a file a GGUF model file? Checked before any reader sees it, on every path that takes one.

subtle: transformers' and llama.cpp's GGUF readers fail on a non-GGUF file with
anything from a struct.error to a 34-line traceback; four magic bytes tell first.
"""

from __future__ import annotations

from pathlib import Path

from chared_flows.errors import ModelLoadError

MAGIC = b"GGUF"


def check_gguf_file(path: Path, spec: str | None = None) -> Path:
    """`path` if it is an existing file that starts with the GGUF magic; ModelLoadError otherwise."""
    name = spec if spec is not None else str(path)
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {name!r} does not exist; check the path")
    try:
        with path.open("rb") as handle:
            head = handle.read(len(MAGIC))
    except OSError as exc:
        raise ModelLoadError(f"GGUF file {name!r} cannot be read ({exc.strerror or exc}); check its permissions") from None
    if head != MAGIC:
        raise ModelLoadError(
            f"{name!r} is not a GGUF file (it starts with {head!r}, not {MAGIC!r}); "
            "give a .gguf model file, or a Hugging Face model directory"
        )
    return path
