"""Everything `chared run` checks before a model loads; `chared workflows validate` is exactly this.

One function for both commands, so they cannot drift apart: whatever `validate` passes,
`run` gets as far as loading models with, and whatever `run` refuses before loading,
`validate` refuses with the same one line (`file:line: ...`, the line of the key at fault).

In order: the file against the schema (flow/spec.py: decoding values, weights, sweeps);
its references (template version, dataset kind, scorers and their options, parser);
every model spec of every variant, without loading it (decoding/backends/checks.py);
the dataset, read and rendered with the template, sample ids unique, each scorer's
`check_sample`; the trackers' own requirements (a PromptLayer key).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from chared_flows.decoding import check_model_spec
from chared_flows.errors import CharedError, WorkflowError
from chared_flows.flow.loader import ResolvedWorkflow, WorkflowStore

ModelCheck = Callable[[str], None]


@dataclass
class Preflight:
    resolved: ResolvedWorkflow
    dataset: dict[str, Any]  # the workflow's dataset reference with the command's overrides
    n_samples: int
    trackers: list[str]


def preflight(
    store: WorkflowStore,
    name_or_path: str,
    *,
    dataset_overrides: dict[str, Any] | None = None,
    limit: int | None = None,
    trackers: list[str] | None = None,
    check_model: ModelCheck | None = None,
) -> Preflight:
    """Check the workflow as `run` would, loading no model; raise a one-line WorkflowError.

    `trackers`: the names the command line chose (None: the workflow's own `trackers:`,
    whose line a message then points at). `check_model` replaces the model-spec check
    (tests with scripted members).
    """
    spec, path, locate = store.load(name_or_path)
    resolved = store.resolve_loaded(spec, path, locate)
    check = check_model or check_model_spec
    for i, variant in enumerate(spec.variants):
        # a combination variant's members were checked when it resolved (files and fingerprints)
        for j, model in enumerate(variant.models or []):
            try:
                check(model)
            except CharedError as exc:
                raise WorkflowError(
                    f"{path}:{locate(('variants', i, 'models', j))}: variant {variant.name!r}: {exc}"
                ) from None
    dataset = {**spec.dataset, **(dataset_overrides or {})}
    count = store.check_samples(resolved, dataset, limit, locate)
    names = list(spec.trackers) if trackers is None else list(trackers)
    for name in names:
        try:
            check_tracker(name)
        except CharedError as exc:
            where = f"{path}:{locate(('trackers',))}" if trackers is None else f"--tracker {name}"
            raise WorkflowError(f"{where}: tracker {name!r}: {exc}") from None
    return Preflight(resolved=resolved, dataset=dataset, n_samples=count, trackers=names)


def check_tracker(name: str) -> None:
    """What a tracker needs before a run starts, checked without contacting it."""
    if name == "promptlayer":
        from chared_flows.tracking.promptlayer import require_api_key

        require_api_key()
