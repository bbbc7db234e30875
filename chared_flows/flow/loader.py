"""Workflows on disk: `workflows/<name>.yaml`, parsed, checked and resolved for running.

`load` checks the file against the schema; `resolve` also checks everything it refers
to (template version, dataset kind, scorers, parser) so `chared workflows validate`
catches a bad workflow before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import chared_flows.evaluation  # noqa: F401  (importing it registers the dataset kinds and scorers)
from chared_flows.errors import CharedError, WorkflowError
from chared_flows.evaluation.base import Scorer, dataset_kinds, get_scorer, load_dataset
from chared_flows.flow.parsers import PARSERS, Parser
from chared_flows.flow.spec import WorkflowSpec
from chared_flows.prompts import PromptTemplateSpec, TemplateStore
from chared_flows.prompts.yamlfile import Locator, describe_validation_error, load_yaml
from chared_flows.records import VariantSpec


@dataclass
class ResolvedWorkflow:
    """A workflow with every reference looked up: ready to run."""

    spec: WorkflowSpec
    path: Path
    template: PromptTemplateSpec
    variants: list[VariantSpec]
    scorers: list[Scorer]
    parser: Parser

    @property
    def content_hash(self) -> str:
        return self.spec.content_hash


class WorkflowStore:
    def __init__(self, root: Path | str, templates: TemplateStore):
        self.root = Path(root)
        self.templates = templates

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())

    def path_of(self, name_or_path: str) -> Path:
        """`name` -> `<root>/name.yaml`; a path to an existing .yaml file is used as is."""
        direct = Path(name_or_path)
        if direct.suffix in (".yaml", ".yml") and direct.is_file():
            return direct
        for suffix in (".yaml", ".yml"):
            candidate = self.root / f"{name_or_path}{suffix}"
            if candidate.is_file():
                return candidate
        known = ", ".join(self.names()) or "none"
        raise WorkflowError(f"unknown workflow {name_or_path!r} in {self.root}; known workflows: {known}")

    def load(self, name_or_path: str) -> tuple[WorkflowSpec, Path, Locator]:
        path = self.path_of(name_or_path)
        data, locate = load_yaml(path, WorkflowError)
        if not isinstance(data, dict):
            raise WorkflowError(f"{path}: a workflow file must be a mapping of keys, got {type(data).__name__}")
        try:
            spec = WorkflowSpec.model_validate(data)
        except ValidationError as exc:
            raise WorkflowError(describe_validation_error(path, locate, exc)) from None
        return spec, path, locate

    def resolve(self, name_or_path: str) -> ResolvedWorkflow:
        return self.resolve_loaded(*self.load(name_or_path))

    def resolve_loaded(self, spec: WorkflowSpec, path: Path, locate: Locator) -> ResolvedWorkflow:
        where = lambda *key: f"{path}:{locate(key)}"  # noqa: E731
        template = self._resolve_template(spec.template, where("template"))
        self._check_dataset_kind(spec.dataset, where("dataset", "kind"))
        scorers = self._resolve_scorers(spec, where)
        if spec.parser not in PARSERS:
            raise WorkflowError(
                f"{where('parser')}: unknown output parser {spec.parser!r}; "
                f"use one of: {', '.join(sorted(PARSERS))}"
            )
        return ResolvedWorkflow(
            spec=spec,
            path=path,
            template=template,
            variants=spec.expanded_variants(),
            scorers=scorers,
            parser=PARSERS[spec.parser],
        )

    def _resolve_template(self, ref: str, where: str) -> PromptTemplateSpec:
        try:
            return self.templates.resolve(ref)
        except CharedError as exc:
            raise WorkflowError(f"{where}: template: {exc}") from None

    def check_samples(
        self, resolved: ResolvedWorkflow, dataset_ref: dict[str, Any], limit: int | None = None,
        locate: Locator | None = None,
    ) -> int:
        """Load the dataset, render the template on every sample and let each scorer look at it.

        What `run` needs before any model: `chared workflows validate` and `chared run` both
        call this (flow/preflight.py), so a workflow whose samples cannot be read, rendered or
        scored is refused by both, before a model loads. `locate` (from `load`) puts the line
        of the offending key in the message. Returns the number of samples.
        """
        where = lambda *key: f"{resolved.path}:{locate(key)}" if locate else str(resolved.path)  # noqa: E731
        try:
            samples = load_dataset(dataset_ref)
        except CharedError as exc:
            raise WorkflowError(f"{where('dataset')}: dataset {dataset_ref.get('kind')!r}: {exc}") from None
        samples = samples[:limit] if limit is not None else samples
        if not samples:
            raise WorkflowError(f"{where('dataset')}: the dataset has no samples; check its options")
        seen: set[str] = set()
        for sample in samples:
            if sample.id in seen:  # resuming and paired comparisons match records by sample id
                raise WorkflowError(
                    f"{where('dataset')}: sample id {sample.id!r} appears twice; give every sample its own id"
                )
            seen.add(sample.id)
            missing = resolved.template.missing_variables(sample.inputs)
            if missing:
                raise WorkflowError(
                    f"{where('dataset')}: sample {sample.id!r} has no {', '.join(repr(m) for m in missing)} for "
                    f"template {resolved.template.ref}; its inputs are {', '.join(sorted(sample.inputs)) or 'none'}"
                )
        self._check_scorers_take(resolved, samples, where)
        return len(samples)

    @staticmethod
    def _check_scorers_take(resolved: ResolvedWorkflow, samples: list, where: Any) -> None:
        """Each scorer's `check_sample` (if it has one) on every sample: the shape it needs."""
        for i, scorer in enumerate(resolved.scorers):
            check = getattr(scorer, "check_sample", None)
            if check is None:
                continue
            for sample in samples:
                try:
                    check(sample)
                except CharedError as exc:
                    raise WorkflowError(f"{where('scorers', i)}: scorer {scorer.name!r}: {exc}") from None

    @staticmethod
    def _check_dataset_kind(ref: dict[str, Any], where: str) -> None:
        kind = ref.get("kind")
        if kind not in dataset_kinds():
            raise WorkflowError(
                f"{where}: unknown dataset kind {kind!r}; use one of: {', '.join(dataset_kinds())}"
            )

    @staticmethod
    def _resolve_scorers(spec: WorkflowSpec, where: Any) -> list[Scorer]:
        scorers = []
        for i, ref in enumerate(spec.scorer_refs()):
            try:
                scorers.append(get_scorer(ref.name, **ref.options))
            except CharedError as exc:
                raise WorkflowError(f"{where('scorers', i)}: {exc}") from None
            except TypeError as exc:  # options the scorer factory does not take
                raise WorkflowError(f"{where('scorers', i)}: bad options for scorer {ref.name!r}: {exc}") from None
        return scorers
