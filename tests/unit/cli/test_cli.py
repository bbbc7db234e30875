"""The `chared` CLI: subcommands end to end on scripted members; user errors are one line, exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import chared_flows.integrations.langchain as lc
from chared_flows import cli
from chared_flows.decoding import Member
from chared_flows.evaluation import base as evaluation
from tests.fixtures.tiny import scripted_member

REPO = Path(__file__).resolve().parents[3]
SCRIPTS = {"five": "The answer is 5.\nQuestion: more", "two": "The answer is 2.\nQuestion: more"}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped templates plus a small inline workflow, as the working directory."""
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "tiny.yaml").write_text(
        "name: tiny\nversion: 1\ntemplate: math_answer@1\n"
        "dataset: {kind: inline, samples: [{id: a, inputs: {question: q1}, reference: 5}, "
        "{id: b, inputs: {question: q2}, reference: 2}]}\n"
        "parser: number\nscorers: [exact]\ndecoding: {max_new_chars: 40, stop: [\"\\n\"]}\n"
        "variants:\n  - {name: five, models: [five]}\n  - {name: mix, models: [five, two], weights_sweep: [0.5]}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHARED_TEMPLATES_DIR", raising=False)
    monkeypatch.delenv("CHARED_WORKFLOWS_DIR", raising=False)

    class Exact:
        name = "exact"

        def score(self, sample, output, parsed):
            return {"exact": float(parsed == sample.reference)}

    monkeypatch.setitem(evaluation._SCORERS, "exact", lambda **_: Exact())
    load = lambda spec, chat=False, **_: scripted_member(SCRIPTS[spec], name=spec)  # noqa: E731
    monkeypatch.setattr(lc, "_load_member", load)
    monkeypatch.setattr(Member, "load", staticmethod(load))
    return tmp_path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_streams_the_ensemble_output(project, capsys) -> None:
    code, out, err = run_cli(capsys, "generate", "Q: 2+3=?", "--models", "five,two", "--weights", "0.9,0.1",
                             "--stop", r"\n", "--max-new-chars", "100")
    assert code == 0, err
    assert out == "The answer is 5.\n"


def test_generate_rejects_mismatched_weights_in_one_line(project, capsys) -> None:
    code, out, err = run_cli(capsys, "generate", "x", "--models", "five,two", "--weights", "1")
    assert code == 2 and out == ""
    assert err.startswith("error: --weights has 1 values for 2 models") and err.count("\n") == 1
    code, _, err = run_cli(capsys, "generate", "x", "--models", "five", "--weights", "abc")
    assert code == 2 and "must be comma-separated numbers" in err and "Traceback" not in err


def test_templates_list_show_and_lock(project, capsys) -> None:
    code, out, _ = run_cli(capsys, "templates", "list")
    assert code == 0 and "math_answer  (v1)" in out and "char_scoring" in out
    code, out, _ = run_cli(capsys, "templates", "show", "math_answer@latest")
    assert code == 0 and "# math_answer@1  sha256:" in out and "(locked)" in out and "Question: {question}" in out
    code, _, err = run_cli(capsys, "templates", "show", "math_answer@9")
    assert code == 2 and "error: template 'math_answer' has no version 9" in err
    code, out, _ = run_cli(capsys, "templates", "lock")
    assert code == 0 and out.strip() == "nothing to lock"


def test_changed_locked_template_is_a_one_line_error(project, capsys) -> None:
    path = project / "templates" / "math_answer" / "v1.yaml"
    path.write_text(path.read_text().replace("Solve the problem.", "Solve it."))
    code, _, err = run_cli(capsys, "templates", "show", "math_answer@1")
    assert code == 2 and "changed after math_answer@1 was locked" in err and err.count("\n") == 1


def test_workflows_list_and_validate(project, capsys) -> None:
    code, out, _ = run_cli(capsys, "workflows", "list")
    assert code == 0 and "tiny  v1  math_answer@1  2 variants" in out
    code, out, err = run_cli(capsys, "workflows", "validate", "tiny")
    assert code == 0, err
    assert "ok: tiny v1" in out and "variant  mix-w0.5: five+two weights 0.5/0.5" in out


def test_validate_reports_a_broken_workflow_with_file_and_line(project, capsys) -> None:
    path = project / "workflows" / "tiny.yaml"
    path.write_text(path.read_text().replace("scorers: [exact]", "scorers: [nosuch]"))
    code, _, err = run_cli(capsys, "workflows", "validate", "tiny")
    assert code == 2 and err.startswith("error: workflows/tiny.yaml:6: unknown scorer 'nosuch'")


def test_dirs_come_from_flags_or_environment(project, capsys, monkeypatch, tmp_path) -> None:
    moved = tmp_path / "elsewhere"
    shutil.move(str(project / "workflows"), moved)
    code, _, err = run_cli(capsys, "workflows", "validate", "tiny")
    assert code == 2 and "unknown workflow 'tiny'" in err
    code, out, _ = run_cli(capsys, "--workflows-dir", str(moved), "workflows", "list")
    assert code == 0 and "tiny" in out
    monkeypatch.setenv("CHARED_WORKFLOWS_DIR", str(moved))
    code, out, _ = run_cli(capsys, "workflows", "validate", "tiny")
    assert code == 0 and "ok: tiny" in out


def test_run_writes_records_and_resumes(project, capsys) -> None:
    code, out, err = run_cli(capsys, "run", "tiny", "--run-id", "r1", "--out", "runs")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["five"]["exact"] == 0.5 and summary["mix-w0.5"]["n"] == 2
    lines = (project / "runs" / "r1" / "records.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["output"] == "The answer is 5."
    code, _, err = run_cli(capsys, "run", "tiny", "--run-id", "r1", "--out", "runs")
    assert code == 0 and "0 new records" in err
    code, _, err = run_cli(capsys, "run", "tiny", "--limit", "0")
    assert code == 2 and "--limit 0 must be at least 1" in err


def test_unknown_subcommand_is_an_argparse_error(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
