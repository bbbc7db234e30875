"""The sandbox stops or refuses hostile completions, and evaluation carries on."""

from __future__ import annotations

import time

import psutil
import pytest

from chared_flows.evaluation import get_scorer, load_dataset
from chared_flows.evaluation.sandbox import Limits, network_namespace_prefix, run_python


@pytest.fixture(scope="module")
def problem0():
    return load_dataset({"kind": "humaneval", "limit": 1})[0]


def test_canonical_solution_passes(problem0):
    scorer = get_scorer("pass_at_1")
    assert scorer.score(problem0, problem0.meta["canonical_solution"], None) == {"pass_at_1": 1.0}


def test_wrong_completion_fails(problem0):
    assert get_scorer("pass_at_1").score(problem0, "    return False\n", None) == {"pass_at_1": 0.0}


def test_infinite_loop_is_killed_then_evaluation_goes_on(problem0):
    scorer = get_scorer("pass_at_1", timeout_s=1.0)
    start = time.monotonic()
    assert scorer.score(problem0, "    while True:\n        pass\n", None) == {"pass_at_1": 0.0}
    assert time.monotonic() - start < 5
    assert scorer.score(problem0, problem0.meta["canonical_solution"], None) == {"pass_at_1": 1.0}


def test_loop_in_a_child_process_does_not_survive_the_timeout():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    result = run_python("while True:\n    pass\n", Limits(timeout_s=0.5))
    assert result.status == "timeout"
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert after <= before


@pytest.mark.parametrize(
    "code, refused",
    [
        ("print(open('/etc/passwd').read())", "outside the sandbox directory"),
        ("import pathlib; pathlib.Path('/etc/hostname').read_text()", "outside the sandbox directory"),
        ("import socket; socket.create_connection(('127.0.0.1', 22), timeout=1)", "network access refused"),
        ("import os; os.system('echo hi')", "os.system refused"),
        ("import os\nwhile True: os.fork()", "os.fork refused"),
        ("import ctypes", "ctypes refused"),
    ],
)
def test_hostile_code_is_refused(code, refused):
    result = run_python(code, Limits(timeout_s=5))
    assert not result.passed
    assert refused in result.detail


def test_code_may_use_its_own_directory_and_the_stdlib():
    code = "import json, math, collections\nopen('f.txt', 'w').write('x')\nassert open('f.txt').read() == 'x'\n"
    assert run_python(code).passed


def test_memory_limit_stops_a_huge_allocation():
    result = run_python("x = bytearray(4 << 30)", Limits(memory_bytes=512 << 20))
    assert not result.passed and "MemoryError" in result.detail


def test_network_namespace_hides_even_loopback_when_available():
    import socket
    import subprocess
    import sys

    prefix = network_namespace_prefix()
    if not prefix:
        pytest.skip("unshare -n is not permitted here; only the audit hook guards the network")
    with socket.socket() as listener:  # reachable from this process...
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
        # ...but not from inside the namespace, even without the audit hook.
        inside = subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True, text=True)
    assert inside.returncode != 0
    assert "unreachable" in inside.stderr or "refused" in inside.stderr
