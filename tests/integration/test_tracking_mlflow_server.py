"""A real `mlflow server` on a loopback port: log a workflow run to it, read it back, stop it.

In the default suite (about 10-15 s): the server is the part users run in docker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from chared_flows.tracking.mlflow import MlflowTracker, load_samples_table
from tests.unit.tracking.conftest import make_records, run_record as _run_record_fixture  # noqa: F401

run_record = _run_record_fixture


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so every helper it starts dies with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, tmp_path / "server.log")
        yield url, proc
    finally:
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)] \
            if psutil.pid_exists(proc.pid) else [proc.pid]
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
        _assert_all_gone(family)


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"mlflow server not healthy after {timeout_s}s:\n{log.read_text()[-3000:]}")


def _assert_all_gone(pids: list[int], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    alive = pids
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        time.sleep(0.2)
    raise AssertionError(f"mlflow server processes survived: {alive}")


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
