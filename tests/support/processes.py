"""Real `chared` processes for fault tests: scripted members (`scripted_cli.py`), a small project.

`Chared(project)` starts processes in their own process groups and kills any still alive
at `close()`; the helpers wait for files without asserting a time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = (
    "name: tiny\nversion: 1\ntemplate: math_answer@1\n"
    "dataset: {kind: inline, samples: [{id: a, inputs: {question: q1}, reference: 5}, "
    "{id: b, inputs: {question: q2}, reference: 2}, {id: c, inputs: {question: q3}, reference: 5}]}\n"
    "parser: number\nscorers: [exact]\ndecoding: {max_new_chars: 40, stop: [\"\\n\"]}\n"
    "variants:\n  - {name: five, models: [five]}\n  - {name: mix, models: [five, two], weights_sweep: [0.5]}\n"
)
PAIRS = 6  # 3 samples x 2 variants


def make_project(folder: Path) -> Path:
    """A copy of the shipped templates and the `tiny` workflow (3 samples, 2 variants)."""
    shutil.copytree(REPO / "templates", folder / "templates")
    (folder / "workflows").mkdir()
    (folder / "workflows" / "tiny.yaml").write_text(WORKFLOW)
    return folder


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
