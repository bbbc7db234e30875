"""`chared ui`: MLflow's UI on the project's own store, one command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.servers import free_port, stop

REPO = Path(__file__).resolve().parents[3]


def test_print_command_names_the_projects_store(tmp_path, monkeypatch, capsys) -> None:
    from chared_flows.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["ui", "--print-command", "--port", "5077"]) == 0
    out = capsys.readouterr().out
    assert f"--backend-store-uri sqlite:///{tmp_path.resolve() / '.chared' / 'mlflow.db'}" in out
    assert "--host 127.0.0.1 --port 5077" in out and " -m mlflow ui " in out


def test_a_bad_port_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    from chared_flows.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["ui", "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --port 0 must be between 1 and 65535"


def test_the_ui_serves_the_runs_of_this_projects_store(tmp_path) -> None:
    pytest.importorskip("mlflow")
    from chared_flows.tracking.mlflow import make_client

    store = tmp_path / ".chared"
    store.mkdir()
    client, _ = make_client(f"sqlite:///{store / 'mlflow.db'}")
    client.create_experiment("chared/seen-in-the-ui")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(REPO), MLFLOW_DISABLE_TELEMETRY="true")
    proc = subprocess.Popen([sys.executable, "-m", "chared_flows.cli", "ui", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        names = _experiments(port, proc)
        assert "chared/seen-in-the-ui" in names
    finally:
        stop(proc, timeout=20)


def _experiments(port: int, proc: subprocess.Popen, timeout_s: float = 120) -> list[str]:
    url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"chared ui exited {proc.returncode}: {proc.stdout.read().decode()[-2000:]}")
        try:
            request = urllib.request.Request(url, data=json.dumps({"max_results": 100}).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                return [e["name"] for e in json.load(response).get("experiments", [])]
        except OSError:
            time.sleep(0.5)
    pytest.fail("chared ui did not answer")
