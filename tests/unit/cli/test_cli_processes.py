"""Records under faults, with real `chared` processes (scripted members, so no model weights).

Two processes on one run id, a process killed mid-write, a pair that keeps failing, and
SIGTERM in the middle of a run logged to MLflow. Each process runs the real CLI through
`tests/support/scripted_cli.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
WORKFLOW = (
    "name: tiny\nversion: 1\ntemplate: math_answer@1\n"
    "dataset: {kind: inline, samples: [{id: a, inputs: {question: q1}, reference: 5}, "
    "{id: b, inputs: {question: q2}, reference: 2}, {id: c, inputs: {question: q3}, reference: 5}]}\n"
    "parser: number\nscorers: [exact]\ndecoding: {max_new_chars: 40, stop: [\"\\n\"]}\n"
    "variants:\n  - {name: five, models: [five]}\n  - {name: mix, models: [five, two], weights_sweep: [0.5]}\n"
)
PAIRS = 6  # 3 samples x 2 variants


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "tiny.yaml").write_text(WORKFLOW)
    return tmp_path


class Chared:
    """Starts `chared` processes in the project; every one still alive at the end is killed."""

    def __init__(self, project: Path):
        self.project = project
        self.started: list[subprocess.Popen] = []

    def start(self, *args: str, **env: str) -> subprocess.Popen:
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true",
                    "OMP_NUM_THREADS": "1", **env}
        if "MLFLOW_TRACKING_URI" not in env:
            full_env.pop("MLFLOW_TRACKING_URI", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.scripted_cli", *args], cwd=self.project, env=full_env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        self.started.append(proc)
        return proc

    def run(self, *args: str, **env: str) -> tuple[int, str, str]:
        proc = self.start(*args, **env)
        out, err = proc.communicate(timeout=120)
        return proc.returncode, out, err

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def chared(project):
    runner = Chared(project)
    yield runner
    runner.close()


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def record_lines(project: Path, run_id: str = "r1") -> list[str]:
    path = project / "runs" / run_id / "records.jsonl"
    return path.read_text().splitlines() if path.is_file() else []


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_a_second_process_on_the_same_run_id_exits_with_one_line_and_nothing_is_written_twice(project, chared):
    gate = project / "gate"
    gate.touch()  # the first process holds its run in its first pair until the gate goes
    first = chared.start("run", "tiny", "--run-id", "r1", "--no-track", CHARED_TEST_GATE=str(gate))
    lock = project / "runs" / "r1" / ".lock"
    wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(first.pid), "the first process's lock")
    code, _, err = chared.run("run", "tiny", "--run-id", "r1", "--no-track")
    gate.unlink()
    assert code == 2, err
    assert error_lines(err) == [f"error: run 'r1' is in use by another process (pid {first.pid}); wait for it "
                                "to finish, or start a new run with another --run-id"]
    assert "Traceback" not in err
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    rows = [json.loads(line) for line in record_lines(project)]
    assert len(rows) == PAIRS and len({(r["sample_id"], r["variant"]) for r in rows}) == PAIRS
    assert {v["n"] for v in json.loads(out).values()} == {3.0}
    code, _, err = chared.run("run", "tiny", "--run-id", "r1", "--no-track")  # the lock went with the process
    assert code == 0 and "0 new records" in err


def test_a_process_killed_mid_write_loses_nothing_on_resume(project, chared):
    first = chared.start("run", "tiny", "--run-id", "r1", "--no-track", CHARED_TEST_DELAY_S="0.02")
    wait_for(lambda: len(record_lines(project)) >= 2, "two records")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    path = project / "runs" / "r1" / "records.jsonl"
    kept = path.read_text().splitlines()[:2]
    path.write_text("\n".join(kept) + "\n" + kept[1][: len(kept[1]) // 2])  # the last write, torn
    code, _, err = chared.run("run", "tiny", "--run-id", "r1", "--no-track")
    assert code == 0, err
    rows = [json.loads(line) for line in record_lines(project)]  # every line parses
    assert len(rows) == PAIRS and len({(r["sample_id"], r["variant"]) for r in rows}) == PAIRS
    assert (path.parent / "records.jsonl.torn").read_text() == kept[1][: len(kept[1]) // 2] + "\n"
    code, _, err = chared.run("run", "tiny", "--run-id", "r1", "--no-track")
    assert code == 0 and "0 new records" in err, err


def test_a_pair_that_keeps_failing_is_counted_once_and_its_success_replaces_it(project, chared):
    for attempt in range(3):
        code, out, err = chared.run("run", "tiny", "--run-id", "r1", "--no-track", CHARED_TEST_FAIL="two")
        assert code == 0, err
        assert json.loads(out)["mix-w0.5"] == {"n": 3.0, "errors": 3.0}, attempt
        assert len(record_lines(project)) == PAIRS
    code, out, err = chared.run("run", "tiny", "--run-id", "r1", "--no-track")
    assert code == 0 and "3 new records" in err, err
    summary = json.loads(out)["mix-w0.5"]
    assert (summary["n"], summary["errors"]) == (3.0, 0.0)
    rows = [json.loads(line) for line in record_lines(project)]
    assert len(rows) == PAIRS and all(r["error"] is None for r in rows)


def test_sigterm_mid_run_ends_the_mlflow_runs_killed_and_a_resume_finishes_them(project, chared):
    from chared_flows.tracking.mlflow import make_client

    uri = f"sqlite:///{project / 'mlflow.db'}"
    first = chared.start("run", "tiny", "--run-id", "r1", MLFLOW_TRACKING_URI=uri, CHARED_TEST_DELAY_S="0.02")
    wait_for(lambda: len(record_lines(project)) >= 1, "the first record")
    os.killpg(first.pid, signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130 and "interrupted" in err, err
    client, _ = make_client(uri)
    experiment = client.get_experiment_by_name("chared/tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"KILLED"}
    code, _, err = chared.run("run", "tiny", "--run-id", "r1", MLFLOW_TRACKING_URI=uri)
    assert code == 0, err
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}  # the same runs, completed
    five = next(r for r in runs if r.data.tags.get("chared.variant") == "five")
    assert five.data.metrics["n_samples"] == 3 and five.data.metrics["exact"] == pytest.approx(2 / 3)
    assert len(client.get_metric_history(five.info.run_id, "sample/exact")) == 3
