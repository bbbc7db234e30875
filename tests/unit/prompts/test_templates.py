"""Versioned templates: schema, resolution, lock, variables, YAML errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from chared_flows.errors import TemplateError
from chared_flows.prompts import PromptTemplateSpec, TemplateStore, template_variables

REPO = Path(__file__).resolve().parents[3]


def write_template(root: Path, name: str, version: int, body: str | None = None) -> Path:
    path = root / name / f"v{version}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        body
        if body is not None
        else textwrap.dedent(
            f"""\
            name: {name}
            version: {version}
            description: test template
            input_variables: [question, context]
            template: "Context: {{context}}\\nQ{version}: {{question}}\\nA:"
            metadata: {{owner: tests}}
            """
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def store(tmp_path: Path) -> TemplateStore:
    write_template(tmp_path, "qa", 1)
    write_template(tmp_path, "qa", 2)
    write_template(tmp_path, "qa", 10)
    return TemplateStore(tmp_path)


def test_resolve_exact_and_latest_versions(store: TemplateStore) -> None:
    assert store.resolve("qa@2").version == 2
    # subtle: "latest" is numeric, so v10 beats v2 even though "v2" > "v10" as strings
    assert store.resolve("qa@latest").version == 10
    assert store.versions("qa") == [1, 2, 10]
    assert store.names() == ["qa"]


def test_render_fills_variables_and_ignores_extras(store: TemplateStore) -> None:
    spec = store.resolve("qa@1")
    assert spec.render({"question": "2+2?", "context": "math", "id": 7}) == "Context: math\nQ1: 2+2?\nA:"


def test_render_lists_every_missing_variable_in_one_error(store: TemplateStore) -> None:
    spec = store.resolve("qa@1")
    with pytest.raises(TemplateError) as info:
        spec.render({"unrelated": 1})
    message = str(info.value)
    assert "qa@1" in message and "question" in message and "context" in message
    assert "unrelated" in message  # says what was given


def test_unknown_version_names_the_available_ones(store: TemplateStore) -> None:
    with pytest.raises(TemplateError, match=r"no version 3; available: 1, 2, 10"):
        store.resolve("qa@3")


def test_unknown_template_names_the_known_ones(store: TemplateStore) -> None:
    with pytest.raises(TemplateError, match=r"unknown template 'nope'.*known templates: qa"):
        store.resolve("nope@1")


@pytest.mark.parametrize("ref", ["qa", "qa@", "qa@0", "qa@v1", "@1"])
def test_bad_reference_syntax_is_rejected(store: TemplateStore, ref: str) -> None:
    with pytest.raises(TemplateError):
        store.resolve(ref)


def test_hash_ignores_yaml_formatting_but_not_text(tmp_path: Path) -> None:
    a = write_template(tmp_path / "a", "t", 1)
    b = write_template(
        tmp_path / "b",
        "t",
        1,
        "# a comment\nmetadata: {owner: someone else}\ntemplate: 'Context: {context}\n\n  Q1: {question}\n\n  A:'\n"
        "input_variables:\n  - question\n  - context\nversion: 1\nname: t\ndescription: other words\n",
    )
    spec_a = TemplateStore(tmp_path / "a").load_file(a)
    spec_b = TemplateStore(tmp_path / "b").load_file(b)
    assert spec_a.template == spec_b.template
    assert spec_a.content_hash == spec_b.content_hash
    changed = spec_a.model_copy(update={"template": spec_a.template + " "})
    assert changed.content_hash != spec_a.content_hash
    assert spec_a.content_hash.startswith("sha256:") and len(spec_a.content_hash) == 7 + 64


def test_lock_catches_a_file_changed_under_an_old_version(store: TemplateStore) -> None:
    assert sorted(store.lock_all()) == ["qa@1", "qa@10", "qa@2"]
    assert store.lock_all() == []  # idempotent
    path = store.path_of("qa", 1)
    path.write_text(path.read_text().replace("Q1:", "Question 1:"))
    with pytest.raises(TemplateError) as info:
        store.resolve("qa@1")
    message = str(info.value)
    assert "changed after qa@1 was locked" in message and "v11.yaml" in message
    store.resolve("qa@2")  # untouched versions still resolve
    with pytest.raises(TemplateError):  # and lock_all refuses to paper over it
        store.lock_all()


def test_unlocked_version_resolves_and_is_reported_unlocked(store: TemplateStore) -> None:
    spec = store.resolve("qa@1")
    assert not store.is_locked(spec)
    store.lock_all()
    assert store.is_locked(spec)
    assert json.loads(store.lock_path.read_text())["qa@1"] == spec.content_hash


def test_malformed_yaml_reports_file_and_line(tmp_path: Path) -> None:
    path = write_template(tmp_path, "bad", 1, "name: bad\nversion: 1\ninput_variables: [a\ntemplate: '{a}'\n")
    with pytest.raises(TemplateError) as info:
        TemplateStore(tmp_path).resolve("bad@1")
    assert f"{path}:" in str(info.value)
    assert "malformed YAML" in str(info.value)
    line = int(str(info.value).split(f"{path}:")[1].split(":")[0])
    assert line in (3, 4)


def test_unknown_key_is_rejected_with_its_line(tmp_path: Path) -> None:
    path = write_template(
        tmp_path, "t", 1, "name: t\nversion: 1\ninput_variables: [a]\ntemplate: '{a}'\ntemplte_typo: x\n"
    )
    with pytest.raises(TemplateError, match=rf"{path}:5: templte_typo: unknown key"):
        TemplateStore(tmp_path).resolve("t@1")


def test_declared_variables_must_match_the_text(tmp_path: Path) -> None:
    write_template(tmp_path, "t", 1, "name: t\nversion: 1\ninput_variables: [a, b]\ntemplate: '{a} {c}'\n")
    with pytest.raises(TemplateError) as info:
        TemplateStore(tmp_path).resolve("t@1")
    assert "used but not in input_variables: c" in str(info.value)
    assert "never used: b" in str(info.value)


def test_file_name_and_declared_version_must_agree(tmp_path: Path) -> None:
    write_template(tmp_path, "t", 2, "name: t\nversion: 1\ninput_variables: [a]\ntemplate: '{a}'\n")
    with pytest.raises(TemplateError, match="declares t@1 but its path says t@2"):
        TemplateStore(tmp_path).resolve("t@2")


def test_brace_escapes_and_bad_placeholders() -> None:
    assert template_variables("def f(): return {{'k': {value}}}") == ["value"]
    spec = PromptTemplateSpec(name="c", version=1, input_variables=["value"], template="d = {{'k': {value}}}")
    assert spec.render(value=3) == "d = {'k': 3}"
    with pytest.raises(TemplateError, match="brace"):
        template_variables("unclosed {value")
    with pytest.raises(TemplateError, match="plain variable name"):
        template_variables("{x.attr}")


def test_shipped_templates_resolve_and_match_the_lock() -> None:
    store = TemplateStore(REPO / "templates")
    assert {"math_answer", "code_complete", "char_scoring"} <= set(store.names())
    for name in store.names():
        for version in store.versions(name):
            spec = store.resolve(f"{name}@{version}")
            assert store.is_locked(spec), f"{spec.ref} is not in templates.lock.json"
