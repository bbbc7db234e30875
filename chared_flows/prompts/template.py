"""One versioned prompt template: its schema, its variables, its content hash, rendering.

Template text uses Python/LangChain f-string syntax: `{question}` is a variable and a
literal brace is written twice (`{{`, `}}`). Subtle: code prompts full of braces must
escape them; a single `{` is reported at load time, not at the first render.
"""

from __future__ import annotations

import hashlib
import json
import string
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from chared_flows.errors import TemplateError


def template_variables(text: str) -> list[str]:
    """Variable names used in `text`, in first-use order. Raises TemplateError on bad syntax."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise TemplateError(
            f"template text has bad brace syntax ({exc}); write a literal brace as '{{{{' or '}}}}'"
        ) from None
    for _literal, field, _spec, _conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier():
            raise TemplateError(
                f"template placeholder {{{field}}} is not a plain variable name; "
                "use {name} only (no indexing, attributes or positional {})"
            )
        if field not in names:
            names.append(field)
    return names


class PromptTemplateSpec(BaseModel):
    """The content of `templates/<name>/v<N>.yaml`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    version: int = Field(ge=1)
    description: str = ""
    input_variables: list[str]
    template: str
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("template")
    @classmethod
    def _template_not_empty(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("template text is empty")
        return text

    @model_validator(mode="after")
    def _variables_match_text(self) -> "PromptTemplateSpec":
        try:
            used = template_variables(self.template)
        except TemplateError as exc:
            raise ValueError(str(exc)) from None
        declared = self.input_variables
        undeclared = [v for v in used if v not in declared]
        unused = [v for v in declared if v not in used]
        if undeclared or unused:
            parts = []
            if undeclared:
                parts.append(f"used but not in input_variables: {', '.join(undeclared)}")
            if unused:
                parts.append(f"in input_variables but never used: {', '.join(unused)}")
            raise ValueError("input_variables do not match the template text (" + "; ".join(parts) + ")")
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def content_hash(self) -> str:
        """sha256 over what changes the rendered prompt (name, version, variables, text).

        Canonical JSON, so YAML comments, key order and quoting style do not matter;
        description and metadata are left out so they can be corrected without a new version.
        """
        canonical = json.dumps(
            {
                "name": self.name,
                "version": self.version,
                "input_variables": list(self.input_variables),
                "template": self.template,
            },
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def missing_variables(self, values: dict[str, Any]) -> list[str]:
        return [v for v in self.input_variables if v not in values]

    def render(self, values: dict[str, Any] | None = None, **more: Any) -> str:
        """Fill the template. Every missing variable is listed in one error; extras are ignored."""
        merged = {**(values or {}), **more}
        missing = self.missing_variables(merged)
        if missing:
            given = ", ".join(sorted(merged)) or "none"
            raise TemplateError(
                f"template {self.ref} is missing variables: {', '.join(missing)} (given: {given})"
            )
        return self.template.format_map({v: merged[v] for v in self.input_variables})
