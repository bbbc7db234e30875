"""Server processes for tests: started in their own process group on 127.0.0.1, ended by that group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """End the process group (a server's helpers die with it): TERM, then KILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server did not listen on {port} within {timeout} s: {log.read_text()[-2000:]}")


@contextmanager
def server(cmd: Sequence[str], port: int, log: Path, env: dict | None = None) -> Iterator[subprocess.Popen]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    try:
        wait_port(port, proc, log)
        yield proc
    finally:
        stop(proc)


def standin(port: int, log: Path, *extra: str) -> "contextmanager":
    """The stand-in logprob server (tests/support/logprob_server.py) on `port`."""
    cmd = [sys.executable, "-m", "tests.support.logprob_server", "--port", str(port), *extra]
    return server(cmd, port, log, env={"PYTHONPATH": str(ROOT)})
