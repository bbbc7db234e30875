"""Records under faults, with real `chared` processes (scripted members, so no model weights).

Two processes on one run id, a process killed mid-write, a pair that keeps failing, and
SIGTERM in the middle of a run logged to MLflow. Each process runs the real CLI through
`tests/support/scripted_cli.py`.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.support.processes import PAIRS, Chared, error_lines, make_project, record_lines, wait_for


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


@pytest.fixture
def chared(project):
    runner = Chared(project)
    yield runner
    runner.close()


def test_a_second_process_on_the_same_run_id_exits_with_one_line_and_nothing_is_written_twice(project, chared):
    gate = project / "gate"
    gate.touch()  # the first process holds its run in its first pair until the gate goes
    first = chared.start("run", "tiny", "--run-id", "r1", "--no-track", CHARED_TEST_GATE=str(gate))
    wait_for(lambda: (project / "runs" / "r1" / "run.json").is_file(), "the first process to start its run")
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
    assert {v["n_samples"] for v in json.loads(out).values()} == {3.0}
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
    for attempt in range(2):  # the second resume is where the error rows used to pile up
        code, out, err = chared.run("run", "tiny", "--run-id", "r1", "--no-track", CHARED_TEST_FAIL="two")
        assert code == 4 and "error: variant mix-w0.5: all 3 pairs failed" in err, err  # every pair of it failed
        assert json.loads(out)["mix-w0.5"] == {"n_samples": 3.0, "n_errors": 3.0, "forward_passes_total": 0.0}, attempt
        assert len(record_lines(project)) == PAIRS
    code, out, err = chared.run("run", "tiny", "--run-id", "r1", "--no-track")
    assert code == 0 and "3 new records" in err, err
    summary = json.loads(out)["mix-w0.5"]
    assert (summary["n_samples"], summary["n_errors"]) == (3.0, 0.0)
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


def test_without_a_terminal_progress_is_a_line_every_interval(project, chared):
    code, _, err = chared.run("run", "tiny", "--run-id", "p1", "--no-track", CHARED_PROGRESS_INTERVAL_S="0.05")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("p1: ")]
    assert lines and lines[-1].startswith("p1: 6/6 pairs, ") and "ETA" in lines[-1] and "/min" in lines[-1]
    code, _, err = chared.run("run", "tiny", "--run-id", "p2", "--no-track", "--no-progress")
    assert code == 0 and not [line for line in err.splitlines() if line.startswith("p2: ")]
