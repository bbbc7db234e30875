"""MLflow outages with a real `mlflow server` and real `chared` processes (scripted members).

In the default suite (no model weights; two server starts, about a minute): the server is
down when a run starts, then killed in the middle of another run. Each time the records
stay on disk, the command exits 3 with one line, and `chared sync` completes the same
MLflow runs later without duplicates.
"""

from __future__ import annotations

import json

import pytest

from tests.support.mlflow_server import MlflowServer
from tests.support.processes import PAIRS, Chared, error_lines, make_project, record_lines, wait_for


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path / "project")


@pytest.fixture
def chared(project):
    runner = Chared(project)
    yield runner
    runner.close()


@pytest.fixture
def server(tmp_path):
    made = MlflowServer(tmp_path / "server")
    yield made
    made.stop()


def mlflow_runs(url: str, run_id: str) -> dict:
    """{"parent": Run, variant name: Run} for one chared run id."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("chared/tiny")
    found = client.search_runs([experiment.experiment_id], filter_string=f"tags.`chared.run_id` = '{run_id}'")
    out = {}
    for run in found:
        key = run.data.tags.get("chared.variant", "parent")
        assert key not in out, f"two MLflow runs for {key} of {run_id}"
        out[key] = run
    return out


def assert_complete(url: str, run_id: str) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=url)
    runs = mlflow_runs(url, run_id)
    assert set(runs) == {"parent", "five", "mix-w0.5"}
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    five = runs["five"]
    assert five.data.metrics["exact"] == pytest.approx(2 / 3) and five.data.metrics["n_samples"] == 3
    for name in ("five", "mix-w0.5"):
        child = runs[name].info.run_id
        assert sorted(m.step for m in client.get_metric_history(child, "sample/exact")) == [0, 1, 2]
        traces = client.search_traces(locations=[runs[name].info.experiment_id], run_id=child)
        assert sorted(t.info.tags["chared.sample_id"] for t in traces) == ["a", "b", "c"]
        assert len(runs[name].inputs.dataset_inputs) == 1
    logged = {a.path for a in client.list_artifacts(runs["parent"].info.run_id)}
    assert {"records.jsonl", "run.json", "samples.json"} <= logged


def test_mlflow_down_then_killed_mid_run_loses_nothing_and_sync_completes_the_same_runs(project, chared, server):
    env = {"MLFLOW_TRACKING_URI": server.url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}

    # 1. The server is down when the run starts: records on disk, exit 3, one line.
    code, out, err = chared.run("run", "tiny", "--run-id", "down", **env)
    assert code == 3, err
    assert len(record_lines(project, "down")) == PAIRS
    (line,) = error_lines(err)
    assert line.startswith(f"error: tracker mlflow: MLflow at {server.url} failed: ")
    assert line.endswith("complete mlflow later with `chared sync --run-id down --out runs`")
    progress = [line for line in err.splitlines() if line.startswith("down: ") and " pairs, " in line]
    assert "Traceback" not in err and len(err.splitlines()) - len(progress) <= 3, err  # progress: a line per 30 s
    assert json.loads(out)["five"]["n_samples"] == 3.0

    # 2. Back up: `chared sync` finds the run by its marker and logs all of it, once.
    server.start()
    code, out, err = chared.run("sync", **env)
    assert code == 0, err
    assert out.startswith("mlflow: run down synced (finished)")
    assert_complete(server.url, "down")
    for again in (("sync", "--run-id", "down"), ("run", "tiny", "--run-id", "down")):
        code, out, err = chared.run(*again, **env)  # a second sync, a resume: nothing doubles
        assert code == 0, err
        assert_complete(server.url, "down")
    assert json.loads(out)["mix-w0.5"]["n_samples"] == 3.0  # stdout is the summary alone (no MLflow links)
    assert not (project / "runs" / "down" / "sync-pending.json").exists()

    # 3. The server dies in the middle of a run.
    gate = project / "gate"
    first = chared.start("run", "tiny", "--run-id", "killed", CHARED_TEST_DELAY_S="0.02",
                         CHARED_TEST_GATE=str(gate), **env)
    wait_for(lambda: len(record_lines(project, "killed")) >= 2, "two records")
    gate.touch()  # hold the run while the server goes
    server.stop(kill=True)
    gate.unlink()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 3, err
    assert len(record_lines(project, "killed")) == PAIRS
    assert len(error_lines(err)) == 1 and "Traceback" not in err, err

    # 4. Restarted on the same store: the runs it left are RUNNING with part of the data...
    server.start()
    left = mlflow_runs(server.url, "killed")
    assert {r.info.status for r in left.values()} == {"RUNNING"}
    # ...until `chared sync` completes those same runs.
    code, _, err = chared.run("sync", **env)
    assert code == 0, err
    assert_complete(server.url, "killed")
    assert {r.info.run_id for r in mlflow_runs(server.url, "killed").values()} == {
        r.info.run_id for r in left.values()}
