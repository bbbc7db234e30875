"""A workflow variant `combination: models:/NAME@ALIAS` decodes exactly as registered."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from chared_flows.combinations.evidence import combination_from_run
from chared_flows.combinations.registry import promote
from chared_flows.errors import ConfigError, WorkflowError
from chared_flows.flow.loader import WorkflowStore
from chared_flows.prompts import TemplateStore
from tests.unit.combinations.conftest import write_run

REPO = Path(__file__).resolve().parents[3]


def workflow(folder: Path, variants: str) -> WorkflowStore:
    shutil.copytree(REPO / "templates", folder / "templates")
    (folder / "workflows").mkdir()
    (folder / "workflows" / "w.yaml").write_text(
        "name: w\nversion: 1\ntemplate: math_answer@1\n"
        "dataset: {kind: inline, samples: [{id: a, inputs: {question: q}, reference: 1}]}\n"
        "decoding: {max_new_chars: 40}\nvariants:\n" + variants)
    return WorkflowStore(folder / "workflows", TemplateStore(folder / "templates"))


def test_a_combination_variant_takes_the_registered_members_and_decoding(tiny_dirs, tmp_path, store):
    combo = combination_from_run(write_run(tmp_path / "r1", tiny_dirs), "mix")
    promote(combo, "tiny-combo", alias="champion")
    store_ = workflow(tmp_path / "p", "  - {name: champion, combination: 'models:/tiny-combo@champion'}\n"
                                      f"  - {{name: challenger, models: ['{tiny_dirs[0]}']}}\n")
    champion, challenger = store_.resolve("w").variants
    assert champion.members == tuple(tiny_dirs) and champion.weights == (0.7, 0.3)
    assert champion.decoding["max_new_chars"] == 12  # the registered value, not the workflow's 40
    assert champion.combination == "models:/tiny-combo@champion (version 1)"
    assert challenger.decoding["max_new_chars"] == 40 and challenger.combination == ""


def test_bad_combination_variants_are_one_line(tiny_dirs, tmp_path, store):
    with pytest.raises(WorkflowError, match="exactly one of models"):
        workflow(tmp_path / "a", f"  - {{name: x, models: ['{tiny_dirs[0]}'], combination: 'models:/c@champion'}}\n"
                 ).resolve("w")
    with pytest.raises(WorkflowError, match="sets weights beside combination"):
        workflow(tmp_path / "b", "  - {name: x, combination: 'models:/c@champion', weights: [1]}\n").resolve("w")
    with pytest.raises(WorkflowError, match="is not models:/NAME@ALIAS"):
        workflow(tmp_path / "c", "  - {name: x, combination: 'c@champion'}\n").resolve("w")
    with pytest.raises(ConfigError, match="no registered model 'c'"):
        workflow(tmp_path / "d", "  - {name: x, combination: 'models:/c@champion'}\n").resolve("w")


def test_chared_run_decodes_a_combination_variant_as_registered(tiny_dirs, tmp_path, store, monkeypatch, capsys):
    import json

    from chared_flows.cli import main
    from chared_flows.combinations.registry import load_combination

    combo = combination_from_run(write_run(tmp_path / "r1", tiny_dirs), "mix")
    promote(combo, "tiny-combo", alias="champion")
    workflow(tmp_path / "p", "  - {name: champion, combination: 'models:/tiny-combo@champion'}\n")
    monkeypatch.chdir(tmp_path / "p")
    assert main(["run", "w", "--run-id", "c1", "--no-track", "--no-progress", "--batch-size", "1"]) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "p" / "runs" / "c1" / "records.jsonl").read_text().splitlines()]
    run = json.loads((tmp_path / "p" / "runs" / "c1" / "run.json").read_text())["run"]
    assert run["variants"][0]["combination"] == "models:/tiny-combo@champion (version 1)"
    expected = load_combination("models:/tiny-combo@champion").combination.ensemble().generate(record["prompt"]).text
    assert record["error"] is None and record["output"] == expected
