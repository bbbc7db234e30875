"""A content fingerprint of each member's files: what makes "the same model" checkable later.

    embedded alias / .gguf file / llama_cpp:SPEC   sha256 of the GGUF file
    HF model directory                              sha256 over its files' names and hashes
    hub id                                          the local hub cache's snapshot directory, as above
    served:URL?tokenizer=SPEC                       the URL and its options, plus the tokenizer's fingerprint

subtle: a served model's weights sit behind the URL where no file can be hashed; its
tokenizer (which decides every token's bytes) can, and the URL with its options names
the rest. Files are hashed in full (a 250 MB GGUF takes well under a second) and the
result is cached per (path, size, mtime) for the process.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlsplit

from chared_flows.errors import ConfigError, ModelLoadError

_CACHE: dict[tuple[str, int, int], str] = {}
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(block)
        _CACHE[key] = digest.hexdigest()
    return _CACHE[key]


def directory_sha256(folder: Path) -> str:
    """Hash of every file's relative path and content (hidden files and folders left out)."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise ModelLoadError(f"model directory {str(folder)!r} has no files to fingerprint")
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + file_sha256(path).encode() + b"\n")
    return digest.hexdigest()


def fingerprint(spec: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The fingerprint of the files a member spec names, e.g. "gguf:sha256:ab12..."; raises if absent."""
    from chared_flows.decoding.backends.files import EMBEDDED, default_cache_dir, looks_like_hub_id

    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"member spec {spec!r} is empty")
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    if spec.startswith("served:"):
        return _served(spec, root)
    if spec.startswith("llama_cpp:"):
        from chared_flows.decoding.backends.specs import parse_llama_cpp

        spec = parse_llama_cpp(spec)[0]
    if spec in EMBEDDED or spec.endswith(".gguf"):
        from chared_flows.decoding.backends.specs import gguf_path

        return "gguf:sha256:" + file_sha256(gguf_path(spec, root))
    path = Path(spec).expanduser()
    if path.is_dir():
        return "dir:sha256:" + directory_sha256(path)
    if looks_like_hub_id(spec):
        return "hub:sha256:" + directory_sha256(_hub_snapshot(spec))
    raise ModelLoadError(
        f"member {spec!r} names no file to fingerprint: not an embedded alias ({', '.join(EMBEDDED)}), "
        "a .gguf file, a model directory, a cached hub id or served:URL?tokenizer=SPEC"
    )


def _served(spec: str, root: Path) -> str:
    from chared_flows.decoding.backends.specs import parse_served

    url, tokenizer, options = parse_served(spec)
    where = urlsplit(url)
    identity = f"{where.scheme}://{where.netloc}{where.path}?" + "&".join(f"{k}={options[k]}" for k in sorted(options))
    return "served:sha256:" + hashlib.sha256(
        (identity + "\0" + fingerprint(tokenizer, root)).encode()).hexdigest()


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # the hub library raises several unrelated classes for "not cached"
        raise ModelLoadError(
            f"hub model {repo_id!r} is not in the local hub cache, so its files cannot be fingerprinted; "
            "download it first or point to a local directory"
        ) from exc
