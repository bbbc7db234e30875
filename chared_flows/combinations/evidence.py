"""From an A/B run directory to a Combination and its evidence.

The run directory (`<out>/<run id>/`) holds run.json (the RunRecord), records.jsonl (one
SampleRecord per pair) and, after `chared ab`, report/ab.json. `report_evidence` is the one
place that reads the report's layout: when the A/B report gains fields (verdicts), only it
changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chared_flows.combinations.combination import Combination, TemplateRef, make_combination
from chared_flows.decoding import chosen_under
from chared_flows.decoding.config import DecodeConfig
from chared_flows.errors import CharedError, ConfigError
from chared_flows.flow.results import ResultsFile, read_json_file
from chared_flows.records import RunRecord, SampleRecord, VariantSpec, score_means

RUN_FILE, RECORDS_FILE, AB_FILE = "run.json", "records.jsonl", "report/ab.json"


def load_run_dir(run_dir: Path) -> tuple[RunRecord, list[SampleRecord]]:
    """The run's RunRecord and its records, read as the runner reads them (one line naming the
    file for a damaged run.json or a corrupt record line; latest row per pair)."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise ConfigError(f"no A/B run in {str(run_dir)!r} (no {RUN_FILE}); give the run id of `chared ab` and its --out")
    data = read_json_file(path, "resume the run with the same --run-id to write it again")
    run = RunRecord.from_dict(data["run"])
    return run, ResultsFile(run_dir / RECORDS_FILE).read()


def variant_of(run: RunRecord, name: str) -> VariantSpec:
    for variant in run.variants:
        if variant.name == name:
            return variant
    known = ", ".join(v.name for v in run.variants)
    raise ConfigError(f"run {run.run_id!r} has no variant {name!r}; its variants: {known}")


def decode_config_of(variant: VariantSpec) -> tuple[DecodeConfig, bool]:
    """The variant's complete DecodeConfig (as the run decoded it) and its chat flag."""
    values = {k: v for k, v in variant.decoding.items() if k != "chat"}
    config = DecodeConfig.build(weights=variant.weights, mode=variant.mode, rule=variant.rule, **values)
    return config, bool(variant.decoding.get("chat", False))


def record_metrics(rows: list[SampleRecord]) -> dict[str, Any]:
    """n, errors and the mean of each score over the variant's error-free rows (the means are
    records.score_means, as in the run's summary; the shape is the combination's evidence)."""
    good = [r for r in rows if not r.error]
    return {"n": len(rows), "errors": len(rows) - len(good), "means": score_means(good)}


def report_evidence(run_dir: Path, variant: str) -> dict[str, Any]:
    """What `chared ab`'s report (ab.json, evaluation/ab.py) says about `variant` as an ensemble:
    its comparisons with each single model and their verdicts. {} without a report."""
    path = Path(run_dir) / AB_FILE
    if not path.is_file():
        return {}
    ab = json.loads(path.read_text(encoding="utf-8"))
    comparisons = [row for row in ab.get("comparisons", []) if isinstance(row, dict) and row.get("ensemble") == variant]
    if not comparisons:
        return {}
    verdicts = {f"vs.{c['single']}.{c['metric']}": f"{c.get('verdict', '')} (p_holm {c.get('p_holm')})"
                for c in comparisons}
    return {"comparisons": comparisons, "verdicts": verdicts}


def combination_from_run(run_dir: Path, variant_name: str, templates: Any = None, *, force: bool = False,
                         cache_dir: str | None = None) -> Combination:
    """The combination of one variant of an A/B run, with its evidence; refuses error rows unless `force`."""
    run, records = load_run_dir(run_dir)
    variant = variant_of(run, variant_name)
    rows = [r for r in records if r.variant == variant_name]
    if not rows:
        raise ConfigError(f"variant {variant_name!r} of run {run.run_id!r} has no records; finish the run first "
                          f"(chared ab ... --run-id {run.run_id})")
    metrics = record_metrics(rows)
    if metrics["errors"] and not force:
        first = next(r for r in rows if r.error)
        raise ConfigError(
            f"variant {variant_name!r} of run {run.run_id!r} has {metrics['errors']} error row(s) of {len(rows)} "
            f"(first: {first.sample_id}: {first.error[:120]}); resume the run to retry them, or pass --force"
        )
    config, chat = decode_config_of(variant)
    evidence = {"run_id": run.run_id, "variant": variant_name, "workflow": f"{run.workflow}@{run.workflow_version}",
                "dataset_hash": run.dataset_hash, "metrics": metrics, **report_evidence(run_dir, variant_name)}
    # pinned where the A/B measured it: a registered combination's own pins, else the run's backend policy
    return make_combination(list(variant.members), config, chat=chat, template=template_of(run, templates),
                            evidence=evidence, cache_dir=cache_dir,
                            backends=list(variant.backends) or chosen_under(run.backend, list(variant.members)))


def template_of(run: RunRecord, templates: Any) -> TemplateRef:
    """The run's template: with its text when the templates dir still has that exact version."""
    ref = TemplateRef(name=run.template, version=run.template_version, hash=run.template_hash)
    if templates is None:
        return ref
    try:
        spec = templates.resolve(f"{run.template}@{run.template_version}")
    except CharedError:  # not available: the reference alone is kept
        return ref
    if spec.content_hash != run.template_hash:
        return ref
    return TemplateRef(name=spec.name, version=spec.version, hash=spec.content_hash,
                       input_variables=list(spec.input_variables), text=spec.template)
