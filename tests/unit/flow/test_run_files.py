"""Damaged run files are one line naming the file and line; a run that never started does not hold its id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chared_flows.errors import ModelLoadError, WorkflowError
from chared_flows.flow.results import ResultsFile, RunLock
from chared_flows.flow.sync import load_run, read_pending
from chared_flows.flow.runner import WorkflowRunner
from tests.unit.flow.test_runner import exact_scorer, runner, workflow_store  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("line, problem", [
    ("[1, 2]", "a JSON list, not an object"),
    ('"text"', "a JSON str, not an object"),
    ("42", "a JSON int, not an object"),
    ('{"run_id": "r1"}', "missing workflow, workflow_version"),
    ('{"hello": 1}', "missing run_id"),
])
def test_a_json_line_that_is_not_a_record_is_one_line_naming_file_and_line(workflow_store, tmp_path, line, problem):
    out = tmp_path / "runs"
    runner(workflow_store, out, limit=1).run_all()
    path = out / "r1" / "records.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + [line] + lines[1:]) + "\n")
    with pytest.raises(WorkflowError) as err:
        runner(workflow_store, out, limit=1).run_all()
    assert str(err.value).startswith(f"{path}:2: JSON but not a record ({problem}")
    assert "\n" not in str(err.value)


def test_a_record_with_a_field_of_the_wrong_type_is_named(workflow_store, tmp_path):
    out = tmp_path / "runs"
    runner(workflow_store, out, limit=1).run_all()
    path = out / "r1" / "records.jsonl"
    first = json.loads(path.read_text().splitlines()[0])
    path.write_text(json.dumps({**first, "scores": [1]}) + "\n")
    with pytest.raises(WorkflowError, match=r"records.jsonl:1: JSON but not a record \(scores is a list\)"):
        ResultsFile(path).read()


def test_invalid_utf8_in_a_middle_line_is_a_corrupt_line_not_a_traceback(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_bytes(b'{"a": "\xff"}\n{}\n')
    with pytest.raises(WorkflowError, match="records.jsonl:1: corrupt record line"):
        ResultsFile(path).read()


@pytest.mark.parametrize("text, message", [
    ('{"workflow_hash": "sha', r"run.json:1: not valid JSON \(Unterminated string"),
    ('{\n  "workflow_hash": "x",\n', r"run.json:3: not valid JSON"),
    ("[1]", "holds a JSON list, not a run"),
])
def test_a_truncated_run_json_is_one_line_naming_the_file(workflow_store, tmp_path, text, message):
    out = tmp_path / "runs"
    runner(workflow_store, out, limit=1).run_all()
    (out / "r1" / "run.json").write_text(text)
    with pytest.raises(WorkflowError, match=message) as err:
        runner(workflow_store, out, limit=1).run_all()
    assert "\n" not in str(err.value)
    (out / "r1" / "run.json").unlink()  # the documented fix: the records are kept, the run resumes
    assert runner(workflow_store, out, limit=1).run_all() == []


def test_sync_reads_of_damaged_run_files_are_one_line(tmp_path):
    (tmp_path / "run.json").write_text('{"run": {"run_id": "r"')
    with pytest.raises(WorkflowError, match=r"run.json:1: not valid JSON"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text('{"run": {"run_id": "r"}}')
    with pytest.raises(WorkflowError, match="JSON but not a run"):
        load_run(tmp_path)
    (tmp_path / "sync-pending.json").write_text('{"trackers": "mlflow"}')
    with pytest.raises(WorkflowError, match="not a list of trackers"):
        read_pending(tmp_path)


def test_a_run_that_failed_before_its_first_pair_does_not_hold_its_id(workflow_store, tmp_path):
    out = tmp_path / "runs"

    def unknown_model(variant):
        raise ModelLoadError(f"unknown model spec {variant.members[0]!r}")

    with pytest.raises(ModelLoadError):
        WorkflowRunner(workflow_store.resolve("demo"), out_dir=out, run_id="r1", llm_factory=unknown_model,
                       progress=False).run_all()
    assert (out / "r1" / "run.json").is_file()  # it got that far
    path = workflow_store.path_of("demo")
    path.write_text(path.read_text().replace("max_new_chars: 60", "max_new_chars: 61"))  # the corrected workflow
    assert len(runner(workflow_store, out).run_all()) == 9


def test_a_busy_run_id_is_refused_before_the_heavy_imports(tmp_path):
    lock = RunLock(tmp_path / "runs" / "busy")
    lock.acquire()
    try:
        code = (
            "import sys; from chared_flows import cli\n"
            "rc = cli.main(['run', 'nowhere', '--run-id', 'busy', '--out', sys.argv[1]])\n"
            "heavy = [m for m in ('chared_flows.flow.runner', 'torch', 'langchain_core') if m in sys.modules]\n"
            "print(rc, heavy)\n"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs")], capture_output=True, text=True,
                              env=env, timeout=120)
    finally:
        lock.release()
    assert done.stdout.strip() == "2 []", done.stderr
    assert f"error: run 'busy' is in use by another process (pid {os.getpid()})" in done.stderr
