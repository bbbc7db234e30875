"""A real `mlflow server` on a loopback port: log a workflow run to it, read it back, stop it.

In the default suite (about 10-15 s): the server is the part users run in docker.
"""

from __future__ import annotations

import psutil
import pytest

from chared_flows.tracking.mlflow import MlflowTracker, load_samples_table
from tests.support.mlflow_server import MlflowServer
from tests.unit.tracking.conftest import make_records, run_record as _run_record_fixture  # noqa: F401

run_record = _run_record_fixture


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path).start()  # its own process group: every helper it starts dies with it
    try:
        yield server.url, server.proc
    finally:
        server.stop()  # and checks that no process of the group survived


def test_log_a_run_to_a_real_server_and_read_it_back(mlflow_server, run_record, tmp_path):
    url, proc = mlflow_server
    assert len(psutil.Process(proc.pid).children(recursive=True)) >= 1  # uvicorn worker(s) to clean up
    records = make_records(run_record, n=2)
    report = tmp_path / "report.md"
    report.write_text("# A/B\n")
    tracker = MlflowTracker(url)
    tracker.on_run_start(run_record)
    for r in records:
        tracker.on_record(r)
    tracker.on_run_end(run_record, {"n": 6}, [report])

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=url)
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["workflow"] == "math_compare@2"
    assert parent.data.metrics["n"] == 6
    assert [a.path for a in client.list_artifacts(parent.info.run_id) if a.path == "report.md"]
    child = client.get_run(tracker.child_run_ids["chared_0.5"])
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.params["weights"] == "0.5,0.5"
    assert [row["sample_id"] for row in load_samples_table(client, child.info.run_id)] == ["s0", "s1"]
