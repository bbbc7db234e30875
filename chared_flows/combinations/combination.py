"""A combination: the versioned, content-addressed object a team ships.

Members (spec strings) with a fingerprint of each one's files and the backend each ran on,
the complete DecodeConfig (weights included), the chat flag, the prompt template
(name@version, hash and text) when there is one, and the evidence that chose it (A/B run,
variant, metrics, verdicts).

`content_hash` covers what changes an output: members, fingerprints, backends, decoding,
chat and the template. Evidence is left out on purpose: the same combination chosen again
by a later A/B run is the same thing to deploy, so it keeps its registry version.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from chared_flows.decoding import pin_problem
from chared_flows.decoding.config import DecodeConfig
from chared_flows.errors import ConfigError

FORMAT = 1
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")


def parse_uri(uri: str) -> tuple[str, str | None, int | None]:
    """(name, alias, version) of models:/NAME@ALIAS or models:/NAME/VERSION."""
    match = _URI.match(uri or "") if isinstance(uri, str) else None
    if not match:
        raise ConfigError(f"registry URI {uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION, "
                          "e.g. models:/my-combo@champion")
    version = match["version"]
    return match["name"], match["alias"], None if version is None else int(version)


class TemplateRef(BaseModel):
    """The prompt template a combination was chosen with (its text, so it renders anywhere)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int
    hash: str
    input_variables: list[str] = Field(default_factory=list)
    text: str = ""  # empty: only the reference is known (the templates dir lacked that version)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def render(self, values: dict[str, Any]) -> str:
        from chared_flows.prompts.template import PromptTemplateSpec

        if not self.text:
            raise ConfigError(f"combination's template {self.ref} was stored without its text; pass rendered prompts")
        spec = PromptTemplateSpec(name=self.name, version=self.version, input_variables=self.input_variables,
                                  template=self.text)
        return spec.render(values)


class Combination(BaseModel):
    """What `chared promote` registers; JSON in, JSON out (see `to_json`, `from_json`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = FORMAT
    members: list[str] = Field(min_length=1)
    fingerprints: list[str] = Field(min_length=1)
    decoding: DecodeConfig
    chat: bool = False
    template: TemplateRef | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)
    # The backend each member ran on where the evidence was measured. A plain spec such as
    # "smollm2" decodes through llama.cpp where its binding is installed and through
    # transformers elsewhere (decoding/backends/auto.py), and their numbers differ; the A/B
    # verdict is about one of them, so loading pins it. None: not recorded (a run from
    # before runs logged their backend policy): each machine chooses as it would.
    backends: list[str] | None = None

    @model_validator(mode="after")
    def _one_fingerprint_per_member(self) -> "Combination":
        if len(self.fingerprints) != len(self.members):
            raise ValueError(f"{len(self.fingerprints)} fingerprints for {len(self.members)} members")
        problem = None if self.backends is None else pin_problem(self.members, self.backends)
        if problem:
            raise ValueError(problem)
        weights = self.decoding.weights
        if weights is not None and len(weights) != len(self.members):
            raise ValueError(f"{len(weights)} weights for {len(self.members)} members ({', '.join(self.members)})")
        return self

    # --- identity ------------------------------------------------------

    def content(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"evidence"})
        if data["backends"] is None:  # unpinned: hashed as before the field existed (registry versions stay)
            del data["backends"]
        if data["template"] is not None:  # name, version and hash identify it; the text is in the hash
            data["template"] = {k: data["template"][k] for k in ("name", "version", "hash")}
        return data

    @property
    def content_hash(self) -> str:
        canonical = json.dumps(self.content(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def describe(self) -> str:
        weights = "" if self.decoding.weights is None else " weights " + "/".join(f"{w:g}" for w in self.decoding.weights)
        backends = "" if self.backends is None else " on " + "/".join(self.backends)
        return f"{'+'.join(self.members)}{weights} mode {self.decoding.mode}{backends}"

    # --- JSON ------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "combination") -> "Combination":
        if not isinstance(data, dict):
            raise ConfigError(f"{where} is not a JSON object; it was not written by `chared promote`")
        if data.get("format", FORMAT) != FORMAT:
            raise ConfigError(f"{where} has format {data.get('format')!r}; this chared_flows reads format {FORMAT}; "
                              "upgrade chared-flows")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            at = f" at {'.'.join(map(str, first['loc']))}" if first["loc"] else ""  # a whole-object check has none
            message = first["msg"].removeprefix("Value error, ")
            raise ConfigError(f"{where} is invalid{at}: {message}") from None

    @classmethod
    def from_json(cls, text: str, where: str = "combination") -> "Combination":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where} is not JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data, where)

    # --- loading back ----------------------------------------------------

    def verify(self, cache_dir: str | None = None, where: str = "combination") -> None:
        """Refuse, in one line, a member whose files changed since the combination was made."""
        from chared_flows.decoding import model_fingerprint as fingerprint

        for spec, expected in zip(self.members, self.fingerprints):
            now = fingerprint(spec, cache_dir)
            if now != expected:
                raise ConfigError(
                    f"member {spec!r} of {where} changed since it was promoted (fingerprint {expected[:24]}... "
                    f"is now {now[:24]}...); restore its files or promote the combination again"
                )

    def load_members(self, device: str = "cpu", cache_dir: str | None = None, where: str = "combination",
                     backend: str | None = None) -> list:
        """The members, each on its pinned backend (`backend`: "transformers" or "llama_cpp" for every
        plain spec instead, knowingly leaving the backend the evidence was measured on)."""
        from chared_flows.decoding import Member, pinned_arguments

        self.verify(cache_dir, where)
        backends = pinned_arguments(self.members, self.backends, where, override=backend)
        return [Member.load(spec, chat=self.chat, cache_dir=cache_dir, device=device, backend=chosen)
                for spec, chosen in zip(self.members, backends)]

    def ensemble(self, device: str = "cpu", cache_dir: str | None = None, where: str = "combination",
                 backend: str | None = None):
        from chared_flows.decoding import Ensemble

        return Ensemble(self.load_members(device, cache_dir, where, backend), self.decoding)

    def prompt_for(self, item: Any) -> str:
        """A prompt from a str, or from a dict of the template's variables (or a "prompt" key)."""
        if isinstance(item, str):
            return item
        if isinstance(item, dict):
            if "prompt" in item and isinstance(item["prompt"], str):
                return item["prompt"]
            if self.template is None:
                raise ConfigError(f"input {item!r} needs a 'prompt' key: this combination has no template")
            return self.template.render(item)
        raise ConfigError(f"input {item!r} is a {type(item).__name__}; give a prompt string or a dict of variables")


def make_combination(
    members: list[str], decoding: DecodeConfig, *, chat: bool = False, template: TemplateRef | None = None,
    evidence: dict[str, Any] | None = None, cache_dir: str | None = None,
    backends: list[str] | None | Literal["here"] = "here",
) -> Combination:
    """Fingerprint each member's files now and build the combination.

    backends: the backend each member ran on; "here" (default): the one this process runs it
    on; None: not pinned.
    """
    from chared_flows.decoding import choose_backend
    from chared_flows.decoding import model_fingerprint as fingerprint

    prints = [fingerprint(spec, cache_dir) for spec in members]
    if backends == "here":
        backends = [choose_backend(spec) for spec in members]
    return Combination.from_dict(dict(members=list(members), fingerprints=prints, decoding=decoding, chat=chat,
                                      template=template, evidence=dict(evidence or {}),
                                      backends=None if backends is None else list(backends)))
