"""Run untrusted code (model completions) in a child process, fenced in.

What is enforced, honestly:
- wall-clock timeout: the child's whole process group is killed (SIGKILL);
- a fresh temporary directory as cwd, removed afterwards; environment emptied;
- resource limits (setrlimit): CPU seconds, address space, file size, and
  RLIMIT_NPROC so a fork bomb fails (per user; effective only for non-root
  users, so `os.fork`/`subprocess` are also refused by the audit hook);
- no network: the child runs in a new network namespace (`unshare -n`, only
  loopback, and that one is down) when the host allows it; independently, an
  audit hook (`sys.addaudithook`) refuses every `socket.*` event;
- reads and writes outside the temp dir: the audit hook refuses `open` of any
  path outside it (and outside Python's own install, needed for imports).

Not enforced: this is not a security boundary against a determined attacker
(ctypes can bypass audit hooks, so `ctypes` imports are refused too, but
C extensions already loaded could still be abused). Use a container for that.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Runs inside the child before the untrusted code. Kept as source text so the
# child needs nothing from this package.
_GUARD = r'''
import os, sys
_ALLOWED = tuple(os.path.realpath(p) for p in __ALLOWED__)
_DENY_EVENTS = {"os.system", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec",
                "subprocess.Popen", "os.kill", "os.killpg", "ctypes.dlopen", "ctypes.cdata",
                "os.remove", "os.rmdir", "os.rename", "shutil.rmtree", "os.chdir"}

def _inside(path):
    if isinstance(path, int):
        return True  # an already open descriptor
    try:
        real = os.path.realpath(os.fsdecode(path))
    except Exception:
        return False
    return any(real == root or real.startswith(root + os.sep) for root in _ALLOWED)

def _hook(event, args):
    if event.startswith("socket."):
        raise PermissionError(f"sandbox: network access refused ({event})")
    if event in _DENY_EVENTS:
        raise PermissionError(f"sandbox: {event} refused")
    if event == "open" and not _inside(args[0]):
        raise PermissionError(f"sandbox: access to {args[0]!r} refused (outside the sandbox directory)")
    if event == "import" and args[0] == "ctypes":
        raise PermissionError("sandbox: ctypes refused")

sys.addaudithook(_hook)
del _hook
'''


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: str  # "passed", "failed", "timeout", "error"
    detail: str
    duration_s: float


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    processes: int = 64


@lru_cache(maxsize=1)
def network_namespace_prefix() -> tuple[str, ...]:
    """`unshare -n` (or `-rn` as non-root) if it works here; else () and only the audit hook guards."""
    tool = shutil.which("unshare")
    if not tool:
        return ()
    for flags in (("-n",), ("-r", "-n")):
        try:
            probe = subprocess.run([tool, *flags, "true"], capture_output=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return (tool, *flags)
    return ()


def _allowed_roots(workdir: Path) -> list[str]:
    paths = sysconfig.get_paths()
    roots = {str(workdir), sys.prefix, sys.base_prefix, sys.exec_prefix, paths["stdlib"], paths["platstdlib"]}
    return sorted(roots)


def _limit(limits: Limits):
    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_python(code: str, limits: Limits = Limits()) -> SandboxResult:
    """Run `code` in a fenced child Python; passed = exit status 0."""
    import time

    with tempfile.TemporaryDirectory(prefix="chared-sandbox-") as tmp:
        workdir = Path(tmp).resolve()
        guard = _GUARD.replace("__ALLOWED__", json.dumps(_allowed_roots(workdir)))
        script = workdir / "main.py"
        script.write_text(guard + "\n" + code, encoding="utf-8")
        # -I: isolated mode (no user site, no PYTHON* env, script dir not on path
        # beyond itself); -S is not used because the stdlib must import.
        argv = [*network_namespace_prefix(), sys.executable, "-I", str(script)]
        start = time.monotonic()
        proc = subprocess.Popen(
            argv, cwd=workdir, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=_limit(limits), start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            return SandboxResult(False, "timeout", f"killed after {limits.timeout_s}s", time.monotonic() - start)
        duration = time.monotonic() - start
    detail = (err or out).decode("utf-8", "replace")[-2000:]
    if proc.returncode == 0:
        return SandboxResult(True, "passed", "", duration)
    if proc.returncode < 0:
        return SandboxResult(False, "error", f"killed by signal {-proc.returncode}: {detail}", duration)
    return SandboxResult(False, "failed", detail, duration)


def _kill_group(proc: subprocess.Popen) -> None:
    # Subtle: kill the whole session (start_new_session=True made the child a
    # group leader), so processes it started do not outlive the timeout.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
