"""Templates on disk: `templates/<name>/v<N>.yaml`, resolved by `name@N` or `name@latest`.

A lock file (`templates.lock.json`, "name@N" -> content hash) pins published versions:
a file edited under an old version number no longer matches its lock entry and is
refused, so "template Y v2" means the same text on every machine.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from chared_flows.errors import TemplateError
from chared_flows.prompts.template import PromptTemplateSpec
from chared_flows.prompts.yamlfile import describe_validation_error, load_yaml

LOCK_FILE = "templates.lock.json"
_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.ya?ml$")


@dataclass(frozen=True)
class TemplateRef:
    name: str
    version: int | None  # None means "latest"

    @classmethod
    def parse(cls, ref: str) -> "TemplateRef":
        name, sep, version = ref.partition("@")
        if not sep or not name:
            raise TemplateError(
                f"template reference {ref!r} has no version; write it as NAME@N or NAME@latest"
            )
        if version == "latest":
            return cls(name, None)
        if not version.isdigit() or int(version) < 1:
            raise TemplateError(
                f"template reference {ref!r} has a bad version {version!r}; "
                "use a positive integer or 'latest'"
            )
        return cls(name, int(version))


class TemplateStore:
    """Read-only view of a templates directory plus its lock file."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    # --- discovery -------------------------------------------------------

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = (_VERSION_FILE.match(p.name) for p in folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def path_of(self, name: str, version: int) -> Path:
        for suffix in (".yaml", ".yml"):
            candidate = self.root / name / f"v{version}{suffix}"
            if candidate.is_file():
                return candidate
        return self.root / name / f"v{version}.yaml"

    # --- resolution ------------------------------------------------------

    def resolve(self, ref: str) -> PromptTemplateSpec:
        """Load `name@N` / `name@latest`, checking it against the lock."""
        parsed = TemplateRef.parse(ref)
        versions = self.versions(parsed.name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise TemplateError(
                f"unknown template {parsed.name!r} in {self.root}; known templates: {known}"
            )
        version = versions[-1] if parsed.version is None else parsed.version
        if version not in versions:
            raise TemplateError(
                f"template {parsed.name!r} has no version {version}; "
                f"available: {', '.join(map(str, versions))} (or use {parsed.name}@latest)"
            )
        spec = self.load_file(self.path_of(parsed.name, version))
        self._check_identity(spec, parsed.name, version)
        self._check_lock(spec)
        return spec

    def load_file(self, path: Path) -> PromptTemplateSpec:
        data, locate = load_yaml(path, TemplateError)
        if not isinstance(data, dict):
            raise TemplateError(f"{path}: a template file must be a mapping of keys, got {type(data).__name__}")
        try:
            return PromptTemplateSpec.model_validate(data)
        except ValidationError as exc:
            raise TemplateError(describe_validation_error(path, locate, exc)) from None

    def _check_identity(self, spec: PromptTemplateSpec, name: str, version: int) -> None:
        path = self.path_of(name, version)
        if spec.name != name or spec.version != version:
            raise TemplateError(
                f"{path} declares {spec.ref} but its path says {name}@{version}; "
                "make the name and version keys match the folder and file name"
            )

    # --- lock ------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_FILE

    def read_lock(self) -> dict[str, str]:
        if not self.lock_path.is_file():
            return {}
        try:
            data = json.loads(self.lock_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise TemplateError(f"{self.lock_path}:{exc.lineno}: malformed lock file: {exc.msg}") from None
        if not isinstance(data, dict):
            raise TemplateError(f"{self.lock_path}: expected a JSON object of 'name@N': 'sha256:...'")
        return {str(k): str(v) for k, v in data.items()}

    def _check_lock(self, spec: PromptTemplateSpec) -> None:
        locked = self.read_lock().get(spec.ref)
        if locked is not None and locked != spec.content_hash:
            raise TemplateError(
                f"{self.path_of(spec.name, spec.version)} changed after {spec.ref} was locked "
                f"(now {spec.content_hash[:19]}..., locked {locked[:19]}...); published versions "
                f"are immutable: put the new text in v{max(self.versions(spec.name)) + 1}.yaml "
                f"(or, if {spec.ref} was never used, remove its entry from {self.lock_path.name})"
            )

    def is_locked(self, spec: PromptTemplateSpec) -> bool:
        return spec.ref in self.read_lock()

    def lock_all(self) -> list[str]:
        """Add every unlocked version to the lock; return the refs added. Never rewrites one."""
        lock = self.read_lock()
        added = []
        for name in self.names():
            for version in self.versions(name):
                spec = self.resolve(f"{name}@{version}")  # raises on a changed locked file
                if spec.ref not in lock:
                    lock[spec.ref] = spec.content_hash
                    added.append(spec.ref)
        if added:
            self.lock_path.write_text(json.dumps(dict(sorted(lock.items())), indent=2) + "\n", encoding="utf-8")
        return added
