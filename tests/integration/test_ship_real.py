"""From a real A/B run on the embedded models to a served combination, against a real `mlflow server`.

One small run (1 sample, 16 characters, batch size 1) of SmolLM2 alone and SmolLM2 + Gemma-3;
its ensemble variant is promoted to models:/ship@champion, loaded by alias through pyfunc and
LangChain (the same greedy text as the run's record), then served with `mlflow models serve`
and queried over HTTP on 127.0.0.1.

Run with: python -m pytest -m integration tests/integration/test_ship_real.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support.mlflow_server import MlflowServer
from tests.support.servers import free_port, wait_http
from tests.support.servers import server as serve_process

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
WORKFLOW = (
    "name: ship\nversion: 1\ntemplate: math_answer@1\n"
    "dataset: {kind: inline, samples: [{id: a, inputs: {question: 'What is 2 + 3?'}, reference: 5}]}\n"
    "parser: number\nscorers: [numeric_exact_match]\ndecoding: {max_new_chars: 16, mode: chared, chat: true}\n"
    "variants:\n  - {name: smollm2, models: [smollm2]}\n"
    "  - {name: mix, models: [smollm2, gemma3-270m], weights: [0.6, 0.4]}\n"
)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    try:
        from chared_flows.decoding import Member

        Member.load("smollm2"), Member.load("gemma3-270m")
    except Exception as exc:  # noqa: BLE001 - the embedded model packages are an optional extra
        pytest.skip(f"embedded models unavailable: {exc}")
    folder = tmp_path_factory.mktemp("ship")
    shutil.copytree(REPO / "templates", folder / "templates")
    (folder / "workflows").mkdir()
    (folder / "workflows" / "ship.yaml").write_text(WORKFLOW)
    server = MlflowServer(folder / "mlflow").start()
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = server.url
    try:
        yield folder, server
    finally:
        server.stop()
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="module")
def promoted(project):
    from chared_flows.cli import main

    folder, _server = project
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert main(["ab", "ship", "--run-id", "r1", "--batch-size", "1", "--no-track", "--no-progress"]) == 0
        assert main(["promote", "r1", "mix", "--name", "ship", "--alias", "champion"]) == 0
    finally:
        os.chdir(cwd)
    rows = [json.loads(line) for line in (folder / "runs" / "r1" / "records.jsonl").read_text().splitlines()]
    record = next(r for r in rows if r["variant"] == "mix")
    assert record["error"] is None and record["output"]
    return record


def test_pyfunc_and_langchain_by_alias_give_the_records_greedy_text(promoted):
    import mlflow

    from chared_flows.integrations.langchain import CharEDLLM

    model = mlflow.pyfunc.load_model("models:/ship@champion")
    assert model.predict([promoted["prompt"]]) == [promoted["output"]]
    assert model.predict({"question": "What is 2 + 3?"}) == [promoted["output"]]  # rendered by its template
    llm = CharEDLLM.from_registry("models:/ship@champion")
    assert llm.models == ["smollm2", "gemma3-270m"] and llm.invoke(promoted["prompt"]) == promoted["output"]


def test_mlflow_models_serve_answers_on_loopback(project, promoted):
    folder, server = project
    port = free_port()
    env = {"MLFLOW_TRACKING_URI": server.url, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true",
           # subtle: the server execs `uvicorn` by name, so the environment's bin folder must be on PATH
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", "models:/ship@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    log = folder / "serve.log"
    with serve_process(cmd, port, log, env=env, cwd=folder, timeout=300) as proc:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, log, timeout=300, what="mlflow models serve")
        body = json.dumps({"inputs": [promoted["prompt"]]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as answer:
            assert json.loads(answer.read()) == {"predictions": [promoted["output"]]}
