"""Which backend runs a plain model spec: `auto` picks llama.cpp for GGUF models where it is installed.

A spec with a backend prefix (`llama_cpp:`, `served:`) says so itself. A plain spec
(an embedded alias, a .gguf file, a HF directory, a hub id) runs on the backend
`Member.load(..., backend=...)` names, else on $CHARED_BACKEND, else `auto`:

- `auto`: a GGUF model (the embedded aliases are GGUF files) on the CPU decodes through
  llama.cpp when the `llama_cpp` binding imports (measured 4.1-4.9x the transformers
  member's chars/s, one thread), and through transformers otherwise (no binding, a
  HF directory or hub id, a GPU device);
- `transformers`: always transformers (the GGUF file dequantised once, as before);
- `llama_cpp`: always llama.cpp (an error for a non-GGUF spec or a missing binding).

The member keeps the spec as its name whichever backend runs it, so records compare
across machines; the choice is in the load log line and in the backend's identity.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

from chared_flows.errors import ConfigError

BACKENDS = ("auto", "transformers", "llama_cpp")
PINNABLE = ("transformers", "llama_cpp", "served")  # what a member ran on, as a combination records it
ENV = "CHARED_BACKEND"


def default_backend() -> str:
    """$CHARED_BACKEND, checked, or `auto`."""
    value = os.environ.get(ENV, "").strip() or "auto"
    if value not in BACKENDS:
        raise ConfigError(f"{ENV}={value!r} is not a backend; use one of: {', '.join(BACKENDS)}")
    return value


@functools.lru_cache(maxsize=1)
def llama_cpp_available() -> bool:
    """Whether the llama-cpp-python binding imports (a build without its shared library does not)."""
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or OSError from a broken shared library
        return False
    return True


def is_gguf_spec(spec: str) -> bool:
    from chared_flows.decoding.backends.files import EMBEDDED

    return spec in EMBEDDED or spec.endswith(".gguf")


def choose_backend(spec: str, requested: str | None = None, device: str = "cpu",
                   available: Callable[[], bool] | None = None) -> str:
    """The backend that runs `spec`: "transformers", "llama_cpp", or a prefix's own ("served").

    `available` (tests fake it) says whether the llama.cpp binding imports.
    """
    requested = requested or default_backend()
    if requested not in BACKENDS:
        raise ConfigError(f"backend {requested!r} is unknown; use one of: {', '.join(BACKENDS)}")
    if spec.startswith(("llama_cpp:", "served:")):
        return spec.split(":", 1)[0]
    if requested == "transformers":
        return "transformers"
    gguf = is_gguf_spec(spec)
    if requested == "llama_cpp":
        if not gguf:
            raise ConfigError(f"backend llama_cpp runs GGUF files; {spec!r} is not an embedded alias or a .gguf file")
        return "llama_cpp"
    installed = (available or llama_cpp_available)()
    return "llama_cpp" if gguf and device == "cpu" and installed else "transformers"


def why(spec: str, requested: str | None, chosen: str) -> str:
    """A few words for the load line: how the backend was chosen."""
    requested = requested or default_backend()
    if spec.startswith(("llama_cpp:", "served:")) or requested != "auto":
        return chosen
    if chosen == "llama_cpp":
        return "llama_cpp (auto: the llama_cpp binding is installed)"
    return "transformers (auto)"


AUTO_LLAMA_CPP = "auto: llama_cpp for GGUF"
AUTO_TRANSFORMERS = "auto: transformers (no llama_cpp binding)"


def policy() -> str:
    """How plain specs are placed in this process, for run records: e.g. "auto: llama_cpp for GGUF"."""
    requested = default_backend()
    if requested != "auto":
        return requested
    return AUTO_LLAMA_CPP if llama_cpp_available() else AUTO_TRANSFORMERS


def chosen_under(recorded_policy: str, specs: list[str]) -> list[str] | None:
    """The backend each spec ran on in a process whose policy() was `recorded_policy` (CPU runs).

    None when the policy is not one policy() writes (a record from before runs logged it).
    """
    readings = {"transformers": ("transformers", False), "llama_cpp": ("llama_cpp", True),
                AUTO_LLAMA_CPP: ("auto", True), AUTO_TRANSFORMERS: ("auto", False)}
    if recorded_policy not in readings:
        return None
    requested, installed = readings[recorded_policy]
    return [choose_backend(spec, requested, available=lambda: installed) for spec in specs]


def pin_problem(specs: list[str], pins: list[str]) -> str | None:
    """Why `pins` cannot pin `specs` (one per spec, each in PINNABLE); None when they can."""
    if len(pins) != len(specs):
        return f"{len(pins)} backends for {len(specs)} members ({', '.join(specs)}); give one per member, or none"
    for spec, pin in zip(specs, pins):
        if pin not in PINNABLE:
            return f"backend {pin!r} of member {spec!r} is not one of {', '.join(PINNABLE)}"
    return None


def pinned_arguments(specs: list[str], pins: list[str] | None, where: str,
                     override: str | None = None) -> list[str | None]:
    """Member.load's `backend` for each spec: its pin (None or empty: unpinned), or `override` for all."""
    pins = list(pins or ()) or [None] * len(specs)
    return [pinned_argument(spec, override or pin, where) for spec, pin in zip(specs, pins)]


def pinned_argument(spec: str, pinned: str | None, where: str) -> str | None:
    """Member.load's `backend` for a member pinned to `pinned` (a combination's record; None: unpinned).

    None where the spec's own prefix decides (llama_cpp:, served:) or nothing is pinned.
    A pin to llama_cpp where its binding does not import is refused here, with the fix,
    rather than fall back silently to numbers the evidence was not measured on.
    """
    if pinned is None or pinned == "served" or spec.startswith(("llama_cpp:", "served:")):
        return None
    if pinned == "llama_cpp" and not llama_cpp_available():
        raise ConfigError(
            f"member {spec!r} of {where} was measured on llama_cpp and the llama-cpp-python binding does not "
            "import here; install it (`make setup-llamacpp`), or override the pin knowingly (its numbers differ "
            "from the evidence's): Combination.ensemble(backend='transformers'), or CharEDLLM(backends=[...])"
        )
    return pinned
