"""`chared run --ray` with the real embedded models: the cluster's records equal a local run's.

Both runs decode greedily, one pair at a time per process (`--batch-size 1`) with one torch
thread, so each pair goes through exactly the same arithmetic locally and in a Ray actor;
any difference in the text would be a difference in what the actor loaded or ran.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO, record_lines

pytest.importorskip("ray")

from tests.support.ray_cluster import LocalRayCluster  # noqa: E402

pytestmark = pytest.mark.integration

WORKFLOW = """\
name: gsm_tiny
version: 1
template: math_answer@1
dataset:
  kind: inline
  samples:
    - {id: a, inputs: {question: "Tom has 3 apples and buys 5 more. How many apples does he have?"}, reference: 8}
    - {id: b, inputs: {question: "A box holds 6 eggs. How many eggs are in 9 boxes?"}, reference: 54}
parser: number
scorers: [numeric_exact_match]
decoding: {max_new_chars: 30, temperature: 0.0, stop: ["\\n"]}
variants:
  - {name: smollm2, models: [smollm2]}
  - {name: chared, models: [smollm2, gemma3-270m], weights_sweep: [0.5]}
"""


def chared(project: Path, cluster: LocalRayCluster, *args: str) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "chared_flows.cli", "run", "gsm_tiny", "--no-track", "--batch-size", "1",
         "--threads", "1", *args], cwd=project, env=cluster.env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode, err


def test_records_on_the_cluster_equal_a_local_run_on_the_embedded_models(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(REPO / "templates", tmp_path / "templates")
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "gsm_tiny.yaml").write_text(WORKFLOW)
    cluster = LocalRayCluster.start(head_cpus=2, worker_cpus=0)
    try:
        code, err = chared(tmp_path, cluster, "--run-id", "local")
        assert code == 0, err
        code, err = chared(tmp_path, cluster, "--run-id", "onray", "--ray", cluster.address, "--ray-actors", "2")
        assert code == 0, err
    finally:
        cluster.stop()
    rows = {run: {(r["sample_id"], r["variant"]): r for r in map(json.loads, record_lines(tmp_path, run))}
            for run in ("local", "onray")}
    assert len(rows["local"]) == 4 and rows["onray"].keys() == rows["local"].keys()
    for pair, local in rows["local"].items():
        remote = rows["onray"][pair]
        assert local["error"] is None and local["output"], pair
        for field in ("output", "parsed", "scores", "finish_reason", "forward_passes"):
            assert remote[field] == local[field], (pair, field)
