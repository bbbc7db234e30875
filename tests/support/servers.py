"""Server processes for tests: started in their own process group on 127.0.0.1, ended by that group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """End the process group (a server's helpers die with it): TERM, then KILL after `timeout` s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
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


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0, what: str = "server") -> None:
    """Until `url` answers 200; raises with the log's tail if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{what} not up at {url} after {timeout} s: {log.read_text(errors='replace')[-3000:]}")


@contextmanager
def server(cmd: Sequence[str], port: int, log: Path, env: dict | None = None, cwd: Path = ROOT,
           timeout: float = 120.0) -> Iterator[subprocess.Popen]:
    """`cmd` in its own process group, once it listens on `port` (within `timeout` s); stopped after."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    try:
        wait_port(port, proc, log, timeout)
        yield proc
    finally:
        stop(proc)


def standin(port: int, log: Path, *extra: str) -> "contextmanager":
    """The stand-in logprob server (tests/support/logprob_server.py) on `port`."""
    cmd = [sys.executable, "-m", "tests.support.logprob_server", "--port", str(port), *extra]
    return server(cmd, port, log, env={"PYTHONPATH": str(ROOT)})
