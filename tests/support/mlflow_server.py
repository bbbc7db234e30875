"""A real `mlflow server` on a loopback port, which a test can stop and start again on the same store.

It runs in its own process group (`start_new_session`), so stopping it ends every helper
process it started; `stop(kill=True)` is a crash (SIGKILL), `stop()` a clean shutdown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.support.servers import free_port, wait_http

__all__ = ["MlflowServer", "free_port"]


class MlflowServer:
    def __init__(self, folder: Path, port: int | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout_s: float = 90) -> "MlflowServer":
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self._log = open(self.folder / "server.log", "ab")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server",
             "--backend-store-uri", f"sqlite:///{self.folder}/server.db",
             "--artifacts-destination", str(self.folder / "artifacts"),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            env=env, cwd=self.folder, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_http(f"{self.url}/health", self.proc, self.folder / "server.log", timeout_s, "mlflow server")
        except RuntimeError:
            if self.proc.poll() is None:  # not healthy in time: a crash, so nothing is left running
                self.stop(kill=True)
            raise
        return self

    def stop(self, kill: bool = False) -> None:
        """End the server and every process of its group; `kill=True` is a crash."""
        if self.proc is None:
            return
        family = [self.proc.pid]
        if psutil.pid_exists(self.proc.pid):
            family += [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        try:
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None
        self._log.close()
        _wait_gone(family)

    def log_tail(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.is_file() else ""


def _wait_gone(pids: list[int], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    alive = pids
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return
        time.sleep(0.2)
    raise AssertionError(f"mlflow server processes survived: {alive}")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
