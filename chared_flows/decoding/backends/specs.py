"""Model specs that name a backend: `llama_cpp:SPEC` and `served:URL?tokenizer=SPEC&...`.

A spec stays one string, so the CLI (`--models`), workflow files and
LangChain configs take these members without new options:

    llama_cpp:smollm2                      embedded alias, its GGUF file run by llama.cpp
    llama_cpp:/models/qwen2.5-0.5b.gguf   any GGUF file
    llama_cpp:gemma3-270m?n_ctx=8192&threads=2
    served:http://127.0.0.1:8080?tokenizer=smollm2
    served:http://127.0.0.1:8000?api=openai&tokenizer=Qwen/Qwen2.5-7B&top_k=20&model=qwen

Options of `llama_cpp:` (all optional): `n_ctx` (context window, 4096, at most
the model's), `threads` (torch's thread count), `snapshot_seqs` (spare KV
sequences for exact mode's snapshots, 32), `state_copies` (1: a snapshot
carries its KV state, so another context restores it without re-feeding; 0
for measuring) and `prefill` (1: exact scoring decodes the text's canonical
tokens once, with every position's logits; 0 for measuring).

Query options of `served:` (all but `tokenizer` optional): `tokenizer` (the
served model's tokenizer: an alias, a HF directory, a .gguf file or a hub id),
`api` (llama_cpp | openai), `top_k` (1000, or `all`: the whole vocabulary, the full
distribution; vLLM allows 20 unless started with `--max-logprobs`), `rest` (spread | drop: the missing mass, see topk.py), `model` (the server's model name, openai API),
`timeout` (seconds per try, 30), `deadline` (seconds per call, all tries and
backoff included, 30), `retries` (3), `concurrency` (8).

Tokenization is always the HF fast tokenizer's. For a GGUF file it is read
from the file itself (transformers' GGUF reader), or from the converted
directory when the transformers backend has already made one (same
tokenizer, loads faster).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from chared_flows.decoding.backends.assets import MemberAssets
from chared_flows.decoding.backends.files import EMBEDDED, converted_dir, looks_like_hub_id
from chared_flows.decoding.backends.gguf import check_gguf_file
from chared_flows.errors import ConfigError, ModelLoadError

PREFIXES = ("llama_cpp:", "served:")
_SERVED_OPTIONS = {"tokenizer", "api", "top_k", "rest", "model", "timeout", "deadline", "retries", "concurrency"}


def names_a_backend(spec: str) -> bool:
    return spec.startswith(PREFIXES)


def load_backend_assets(spec: str, root: Path, name: str | None = None) -> MemberAssets:
    """The assets of a prefixed spec; `name`: the member's name (default the spec itself)."""
    if spec.startswith("llama_cpp:"):
        return _llama_cpp_assets(spec, spec[len("llama_cpp:"):], root, name)
    return _served_assets(spec, spec[len("served:"):], root)


def gguf_path(spec: str, root: Path) -> Path:
    """The GGUF file an alias or a .gguf path names."""
    if spec in EMBEDDED:
        return EMBEDDED[spec](root)
    path = Path(spec).expanduser()
    if not spec.endswith(".gguf"):
        raise ModelLoadError(
            f"llama_cpp model {spec!r} is neither an embedded alias ({', '.join(EMBEDDED)}) nor a .gguf file; "
            "llama.cpp runs GGUF files"
        )
    return check_gguf_file(path, spec)


def tokenizer_from_gguf(path: Path, root: Path) -> Any:
    from transformers import AutoTokenizer

    converted = converted_dir(path, root)
    if (converted / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(converted))
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def load_tokenizer(spec: str, root: Path) -> Any:
    """The HF tokenizer of an alias, a .gguf file, a HF directory or a hub id (no weights loaded)."""
    if spec in EMBEDDED or spec.endswith(".gguf"):
        return tokenizer_from_gguf(gguf_path(spec, root), root)
    from transformers import AutoTokenizer

    if Path(spec).expanduser().is_dir() or looks_like_hub_id(spec):
        try:
            return AutoTokenizer.from_pretrained(str(Path(spec).expanduser()) if Path(spec).expanduser().is_dir() else spec)
        except OSError as exc:
            raise ModelLoadError(f"could not load the tokenizer {spec!r}: {str(exc).splitlines()[0]}") from exc
    raise ModelLoadError(
        f"tokenizer {spec!r} is not an embedded alias ({', '.join(EMBEDDED)}), a .gguf file, a directory or a hub id"
    )


_LLAMA_OPTIONS = ("n_ctx", "threads", "snapshot_seqs", "state_copies", "prefill")
_LLAMA_SWITCHES = ("state_copies", "prefill")  # 0 or 1


def parse_llama_cpp(spec: str) -> tuple[str, dict[str, int]]:
    """(alias or .gguf path, LlamaCppBackend options) of `llama_cpp:SPEC[?n_ctx=N&threads=N&snapshot_seqs=N&state_copies=0|1&prefill=0|1]`."""
    inner = spec[len("llama_cpp:"):] if spec.startswith("llama_cpp:") else spec
    model, _, query = inner.partition("?")
    if not model:
        raise ConfigError(f"model spec {spec!r} names no model; write llama_cpp:smollm2 or llama_cpp:/path/model.gguf")
    options: dict[str, int] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _LLAMA_OPTIONS:
            raise ConfigError(f"llama_cpp option {name!r} in {spec!r} is unknown; use: {', '.join(_LLAMA_OPTIONS)}")
        low = 0 if name in ("snapshot_seqs",) + _LLAMA_SWITCHES else 1  # 0: off (for measuring)
        high = 1 if name in _LLAMA_SWITCHES else None
        try:
            options[name] = int(value)
            if options[name] < low or (high is not None and options[name] > high):
                raise ValueError
        except ValueError:
            want = "0 or 1" if high is not None else f"an integer >= {low}"
            raise ConfigError(f"llama_cpp option {name}={value!r} in {spec!r} is not {want}") from None
    return model, options


def _llama_cpp_assets(spec: str, inner: str, root: Path, name: str | None = None) -> MemberAssets:
    from chared_flows.decoding.backends.llamacpp import LlamaCppBackend, import_llama_cpp

    import_llama_cpp()  # the missing extra is the first thing to say
    model, options = parse_llama_cpp(spec)
    path = gguf_path(model, root)
    backend = LlamaCppBackend(path, source=f"{model} ({path.name})" if model != str(path) else str(path), **options)
    tokenizer = tokenizer_from_gguf(path, root)
    eos = backend.eos_token_id()
    return MemberAssets.build(
        name or spec,
        tokenizer,
        backend,
        num_rows=backend.n_vocab,
        eos_token_ids=[eos] if eos is not None else [],
        context_window=backend.n_ctx,
        source=backend.source,
    )


def parse_served(spec: str) -> tuple[str, str, dict[str, Any]]:
    """(server URL, tokenizer spec, ServedBackend options) of `served:URL?opt=value&...`, checked."""
    from chared_flows.decoding.backends.served import check_url

    url = spec[len("served:"):] if spec.startswith("served:") else spec
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - _SERVED_OPTIONS)
    if unknown:
        raise ConfigError(
            f"served member option {unknown[0]!r} in {spec!r} is unknown; use: {', '.join(sorted(_SERVED_OPTIONS))}"
        )
    tokenizer = options.pop("tokenizer", "")
    if not tokenizer:
        raise ConfigError(
            f"served member {spec!r} needs tokenizer=SPEC (the served model's tokenizer: an alias, a directory, "
            "a .gguf file or a hub id), e.g. served:http://127.0.0.1:8080?tokenizer=smollm2"
        )
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    check_url(base)
    kwargs: dict[str, Any] = {}
    for name, value in options.items():
        kind = _NUMBERS.get(name, str)
        try:
            kwargs[name] = kind(value)
        except ValueError:
            raise ConfigError(
                f"served member option {name}={value!r} in {spec!r} is not {_KIND_NAMES[kind]}"
            ) from None
    return base, tokenizer, kwargs


def _top_k(value: str) -> int | str:
    return value if value == "all" else int(value)


_NUMBERS = {"top_k": _top_k, "retries": int, "concurrency": int, "timeout": float, "deadline": float}
_KIND_NAMES = {int: "an integer", float: "a number", _top_k: "an integer or 'all'"}


def _served_assets(spec: str, inner: str, root: Path) -> MemberAssets:
    from chared_flows.decoding.backends.served import ServedBackend

    url, tokenizer_spec, kwargs = parse_served(inner)
    tokenizer = load_tokenizer(tokenizer_spec, root)
    backend = ServedBackend(url, num_rows=len(tokenizer), **kwargs)
    return MemberAssets.build(spec, tokenizer, backend, num_rows=len(tokenizer), source=url)
