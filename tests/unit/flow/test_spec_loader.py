"""Workflow files: schema, sweep expansion, reference checks, file:line errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from chared_flows.errors import WorkflowError
from chared_flows.evaluation import base as evaluation
from chared_flows.flow.loader import WorkflowStore
from chared_flows.prompts import TemplateStore

REPO = Path(__file__).resolve().parents[3]

GOOD = """\
name: demo
version: 3
template: qa@1
dataset: {kind: inline, samples: [{id: a, inputs: {question: "1+1?"}, reference: 2}]}
parser: number
scorers: [always_one]
decoding: {max_new_chars: 40, temperature: 0.0, stop: ["\\n"]}
variants:
  - name: single
    models: [m1]
  - name: pair
    models: [m1, m2]
    weights: [0.7, 0.3]
    decoding: {temperature: 0.5}
  - name: sweep
    models: [m1, m2]
    weights_sweep: [0.25, 0.5]
"""


class AlwaysOne:
    name = "always_one"

    def score(self, sample, output, parsed):
        return {"one": 1.0}


@pytest.fixture(autouse=True)
def stub_scorer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(evaluation._SCORERS, "always_one", lambda **_: AlwaysOne())


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    templates = tmp_path / "templates" / "qa"
    templates.mkdir(parents=True)
    (templates / "v1.yaml").write_text(
        "name: qa\nversion: 1\ninput_variables: [question]\ntemplate: 'Q: {question}\\nA:'\n"
    )
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    return tmp_path / "templates", workflows


def store_with(dirs: tuple[Path, Path], text: str, name: str = "demo") -> WorkflowStore:
    templates, workflows = dirs
    (workflows / f"{name}.yaml").write_text(textwrap.dedent(text))
    return WorkflowStore(workflows, TemplateStore(templates))


def test_good_workflow_resolves_and_expands_the_sweep(dirs) -> None:
    resolved = store_with(dirs, GOOD).resolve("demo")
    names = [v.name for v in resolved.variants]
    assert names == ["single", "pair", "sweep-w0.25", "sweep-w0.5"]
    by_name = {v.name: v for v in resolved.variants}
    assert by_name["sweep-w0.25"].weights == (0.25, 0.75)
    assert by_name["pair"].weights == (0.7, 0.3)
    assert by_name["single"].weights is None and by_name["single"].is_single
    # workflow defaults merge under the variant's own decoding params
    decoding = by_name["pair"].decoding
    assert {k: decoding[k] for k in ("max_new_chars", "temperature", "stop")} == {
        "max_new_chars": 40, "temperature": 0.5, "stop": ["\n"]}
    assert decoding["beam_width"] == 8 and decoding["token_healing"] is True  # engine defaults, made explicit
    assert by_name["single"].decoding["temperature"] == 0.0
    assert resolved.template.ref == "qa@1"
    assert resolved.parser("it is 2.") == 2
    assert [s.name for s in resolved.scorers] == ["always_one"]
    assert resolved.content_hash.startswith("sha256:")


def test_hash_changes_with_content(dirs) -> None:
    a = store_with(dirs, GOOD).resolve("demo").content_hash
    b = store_with(dirs, GOOD.replace("0.7, 0.3", "0.6, 0.4")).resolve("demo").content_hash
    assert a != b


def test_weights_count_must_match_models_and_error_has_line(dirs) -> None:
    store = store_with(dirs, GOOD.replace("weights: [0.7, 0.3]", "weights: [0.7, 0.2, 0.1]"))
    with pytest.raises(WorkflowError) as info:
        store.resolve("demo")
    message = str(info.value)
    assert "demo.yaml:11:" in message  # the `- name: pair` entry
    assert "3 weights for 2 models" in message


def test_malformed_yaml_reports_file_and_line(dirs) -> None:
    store = store_with(dirs, GOOD.replace("parser: number", "parser: [number"))
    with pytest.raises(WorkflowError, match=r"demo\.yaml:\d+: malformed YAML"):
        store.resolve("demo")


def test_unknown_template_version_is_reported(dirs) -> None:
    store = store_with(dirs, GOOD.replace("qa@1", "qa@7"))
    with pytest.raises(WorkflowError, match=r"demo\.yaml:3: template: template 'qa' has no version 7; available: 1"):
        store.resolve("demo")


def test_unknown_dataset_kind_lists_known_kinds(dirs) -> None:
    store = store_with(dirs, GOOD.replace("kind: inline", "kind: nosuch"))
    with pytest.raises(WorkflowError, match=r"demo\.yaml:4: unknown dataset kind 'nosuch'; use one of: .*inline"):
        store.resolve("demo")


def test_unknown_scorer_lists_known_scorers(dirs) -> None:
    store = store_with(dirs, GOOD.replace("[always_one]", "[always_one, nosuch]"))
    with pytest.raises(WorkflowError, match=r"demo\.yaml:6: unknown scorer 'nosuch'; use one of: .*always_one"):
        store.resolve("demo")


def test_unknown_parser_and_unknown_key(dirs) -> None:
    with pytest.raises(WorkflowError, match="unknown output parser 'json'"):
        store_with(dirs, GOOD.replace("parser: number", "parser: json")).resolve("demo")
    with pytest.raises(WorkflowError, match=r"demo\.yaml:10: variants\.0\.modles: unknown key"):
        store_with(dirs, GOOD.replace("models: [m1]\n", "modles: [m1]\n", 1)).resolve("demo")


@pytest.mark.parametrize(
    "change, expected",
    [
        ("weights_sweep: [0.25, 0.5]", "weights_sweep: [1.5]"),
        ("weights_sweep: [0.25, 0.5]", "weights_sweep: [[0.5, 0.3, 0.2]]"),
        ("weights_sweep: [0.25, 0.5]", "weights_sweep: [0.5]\n    weights: [0.5, 0.5]"),
        ("name: single", "name: pair"),
    ],
)
def test_bad_variants_are_rejected(dirs, change: str, expected: str) -> None:
    with pytest.raises(WorkflowError):
        store_with(dirs, GOOD.replace(change, expected)).resolve("demo")


def test_unknown_workflow_lists_known_ones(dirs) -> None:
    store = store_with(dirs, GOOD)
    with pytest.raises(WorkflowError, match="unknown workflow 'other'.*known workflows: demo"):
        store.resolve("other")


def test_shipped_workflows_parse_and_use_shipped_templates() -> None:
    store = WorkflowStore(REPO / "workflows", TemplateStore(REPO / "templates"))
    assert {"math_code_compare", "char_scoring"} <= set(store.names())
    for name in store.names():
        spec, _path, _locate = store.load(name)
        store.templates.resolve(spec.template)
    spec, _, _ = store.load("math_code_compare")
    names = [v.name for v in spec.expanded_variants()]
    assert names == ["smollm2", "gemma3-270m", "chared-w0.25", "chared-w0.5", "chared-w0.75"]
    assert spec.dataset["kind"] == "gsm_symbolic"
    assert store.load("char_scoring")[0].scorers == ["bits_per_char"]
