"""Run untrusted code (model completions) behind an operating-system boundary: bubblewrap.

The boundary (`bwrap`, Debian package `bubblewrap`), for every run:
- fresh user, mount, pid, network, ipc, uts (and cgroup) namespaces; no user
  namespaces inside (`--disable-userns`); all capabilities dropped, no new
  privileges (bwrap sets no_new_privs), a new session (no terminal to inject
  into), killed with its parent; uid/gid 65534 inside. Run as root, bwrap
  itself is started as uid 65534, so the sandbox is nobody *outside* as well:
  mapped to root outside (bwrap's default as root), a process could open host
  sysctls such as kernel.core_pattern for writing through its new /proc.
- a read-only view of only what the interpreter needs: /usr (and the /bin,
  /lib* links), the Python install when it is outside /usr (its site-packages
  hidden), a minimal /dev, the new pid namespace's /proc, and private
  size-limited tmpfs at /tmp (the cwd) and /dev/shm, the only writable
  mounts: bwrap's root tmpfs and /dev are remounted read-only (they have no
  size cap). No /etc, no home, no project, no virtualenv. The environment is
  empty.
- limits: wall clock (the parent's deadline), CPU seconds, address space, file
  size, processes (RLIMIT_NPROC, set inside: it counts per uid in the sandbox's
  own user namespace), open files, and the bytes of output kept (a bounded
  reader; more output ends the run).
- on timeout, output overflow or the end of the run, the outer bwrap is
  SIGKILLed; its pid-namespace init dies with it (`--die-with-parent`) and the
  kernel kills every process in the namespace, `setsid` grandchildren included.
  Pipes are read with a deadline, so nothing can hold the parent.

A pass must be earned. HumanEval code runs in two sandboxes that share nothing
but a pair of pipes:
- the *worker* loads prompt + completion and answers calls of the entry point;
- the *judge* runs the dataset's tests, where `candidate` is a proxy that sends
  each call to the worker and decodes the reply as plain data (exact built-in
  types, tagged JSON: no objects with their own `__eq__`). Only the judge knows
  the per-run random token, and only the judge's stdout, which the worker
  cannot reach, carries the verdict `<token> {"passed": ...}`.
So `sys.exit(0)`, `os._exit(0)`, `SystemExit` in the completion, printing a
sentinel, rewriting the harness's globals or reading `/proc/*/fd` (the judge
is not even in the worker's pid namespace) all end as a failure: the judge
sees an exception or a dead pipe, never a pass. What the worker controls is
what a function controls: its return values, its exceptions and its time.

Where bubblewrap is missing or cannot create namespaces, `box_for` refuses
(`SandboxUnavailableError`: one line naming `apt-get install bubblewrap`),
unless CHARED_UNSAFE_EXEC=1 (or the scorer option `unsafe_exec: true`) allows
running unsandboxed: then the same harness runs as a plain process group with
rlimits in a temporary directory, which is no boundary at all.

Why bubblewrap: one small binary, in Debian and most distributions (flatpak's
sandbox), no daemon, no setuid bit needed, and every option above is a flag.
nsjail is not packaged in Debian 12; firejail is setuid root with a large
profile language; a container runtime needs a daemon and an image.

Not covered: seccomp (the kernel's whole syscall surface is reachable), cgroups
(memory is limited per process, so a sandbox may use up to processes x
address space), and the judge's decoding of replies is the one place where
untrusted bytes meet trusted code (plain `json` with a strict tag table).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from chared_flows.errors import SandboxUnavailableError

UNSAFE_ENV = "CHARED_UNSAFE_EXEC"
INSTALL = "apt-get install bubblewrap"
NOBODY = 65534
GRACE_S = 1.0  # after a kill: how long to wait for the pipes' end
TMP_BYTES = 64 << 20  # size of each private tmpfs (/tmp, /dev/shm)


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock, the whole run
    cpu_s: int = 10  # per process
    memory_bytes: int = 1 << 30  # address space, per process
    file_bytes: int = 16 << 20  # largest file written
    processes: int = 16  # processes and threads of the sandbox's uid
    output_bytes: int = 1 << 20  # stdout + stderr kept; more ends the run

    def rlimits(self) -> dict[str, int]:
        return {
            "RLIMIT_CPU": int(self.cpu_s), "RLIMIT_AS": int(self.memory_bytes),
            "RLIMIT_FSIZE": int(self.file_bytes), "RLIMIT_NPROC": int(self.processes),
            "RLIMIT_NOFILE": 256, "RLIMIT_CORE": 0,
        }


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # run_check: the judge's verdict; run_python: exit status 0 (the program's claim)
    status: str  # "passed", "failed", "timeout", "output_limit", "error"
    detail: str
    duration_s: float
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True)
class Box:
    """How a sandboxed process is started: the argv before the interpreter's."""

    prefix: tuple[str, ...]  # bwrap and its options; () when unsandboxed
    python: str
    as_nobody: bool  # start bwrap as uid/gid 65534 (we are root)

    @property
    def sandboxed(self) -> bool:
        return bool(self.prefix)


# -- which box -----------------------------------------------------------------------------

def box_for(unsafe: bool = False) -> Box:
    """The bubblewrap box; else, only if `unsafe` or CHARED_UNSAFE_EXEC=1, a plain process."""
    found = _bwrap_box()
    if isinstance(found, Box):
        return found
    if unsafe or os.environ.get(UNSAFE_ENV) == "1":
        _warn_unsafe(found)
        return Box((), _own_python(), False)
    raise SandboxUnavailableError(
        f"refusing to run generated code: {found}; install bubblewrap ({INSTALL}) "
        f"or set {UNSAFE_ENV}=1 to run it unsandboxed at your own risk"
    )


def sandbox_unavailable_reason() -> str | None:
    """None where bubblewrap works here; else why not (for skips and `chared` errors)."""
    found = _bwrap_box()
    return None if isinstance(found, Box) else found


@functools.lru_cache(maxsize=1)
def _warn_unsafe(reason: str) -> None:
    warnings.warn(f"{UNSAFE_ENV}: generated code runs WITHOUT a sandbox ({reason})", RuntimeWarning, stacklevel=3)


@functools.lru_cache(maxsize=1)
def _bwrap_box() -> Box | str:
    """The working bwrap box, or the reason there is none (probed once per process)."""
    bwrap = _find_bwrap()
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    as_nobody = os.geteuid() == 0
    interpreters = _interpreters(as_nobody)
    if not interpreters:
        return (f"no Python that uid {NOBODY} can run ({_own_python()} is in a private directory "
                f"and /usr/bin/python3 is missing: apt-get install python3)")
    reasons = []
    for python, prefix in interpreters:
        box = Box(tuple(_bwrap_argv(bwrap, prefix)), python, as_nobody)
        reason = _probe(box)
        if reason is None:
            return box
        reasons.append(f"{python}: {reason}")
    return "bwrap cannot run Python here (" + "; ".join(reasons) + ")"


def _find_bwrap() -> str | None:
    return shutil.which("bwrap") or next((p for p in ("/usr/bin/bwrap", "/bin/bwrap") if os.path.exists(p)), None)


def _own_python() -> str:
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _interpreters(as_nobody: bool) -> list[tuple[str, str]]:
    """(interpreter, install prefix) to try. The venv's python is a link into the base install."""
    found = [(_own_python(), sys.base_prefix)]
    system = os.path.realpath("/usr/bin/python3")
    if as_nobody and system != found[0][0]:
        # Subtle: as root the box is uid 65534 outside too, and a Python under
        # /root (pyenv) is not reachable by it: fall back to the system's.
        found.append((system, "/usr"))
    return [(exe, prefix) for exe, prefix in found if os.path.isfile(exe) and (not as_nobody or _open_to_others(exe))]


def _open_to_others(path: str) -> bool:
    """Every directory above `path` searchable by others, and the file readable and executable."""
    p = Path(path)
    if not all(os.stat(d).st_mode & stat.S_IXOTH for d in p.parents):
        return False
    return os.stat(p).st_mode & (stat.S_IROTH | stat.S_IXOTH) == (stat.S_IROTH | stat.S_IXOTH)


@functools.lru_cache(maxsize=1)
def _bwrap_options(bwrap: str) -> str:
    return subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout


def _bwrap_argv(bwrap: str, prefix: str) -> list[str]:
    known = _bwrap_options(bwrap)
    argv = [
        bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try", *(["--disable-userns"] if "--disable-userns" in known else []),
        "--uid", str(NOBODY), "--gid", str(NOBODY), "--hostname", "sandbox",
        "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv",
        "--ro-bind", "/usr", "/usr",
    ]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):  # merged /usr: /lib -> usr/lib
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    if not _under(prefix, "/usr"):
        argv += ["--ro-bind", prefix, prefix]
        sites = {sysconfig.get_path(key, vars={"base": prefix, "platbase": prefix}) for key in ("purelib", "platlib")}
        for site in sorted(sites):  # the install's own third-party packages: not needed
            if os.path.isdir(site) and _under(site, prefix):
                argv += ["--tmpfs", site, "--remount-ro", site]
    sized = ["--size", str(TMP_BYTES)] if "--size" in known else []
    argv += ["--dev", "/dev", *sized, "--tmpfs", "/dev/shm", "--proc", "/proc", *sized, "--tmpfs", "/tmp"]
    # subtle: bwrap's own root (/) and /dev are tmpfs without a size cap (half the host's RAM,
    # shared memory of the host): writable, a completion could fill them past every limit.
    # Remounted read-only last; --remount-ro is not recursive, so /tmp and /dev/shm (capped)
    # stay the only writable places, and device nodes such as /dev/null still take writes.
    argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp", "--"]
    return argv


def _under(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root + os.sep)


def _probe(box: Box) -> str | None:
    argv = [*box.prefix, box.python, "-I", "-S", "-c", "import json, resource; print('ok')"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={}, cwd="/", **_user(box))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{type(exc).__name__}: {exc}"
    if done.returncode == 0 and done.stdout.strip() == "ok":
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {done.returncode}"


def _user(box: Box) -> dict:
    return {"user": NOBODY, "group": NOBODY, "extra_groups": []} if box.as_nobody else {}


# -- starting and ending processes -----------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _harness_source() -> str:
    return Path(__file__).with_name("sandbox_harness.py").read_text(encoding="utf-8")


class _Session:
    """The processes of one run: started in the box, always killed and closed at the end."""

    def __init__(self, box: Box, limits: Limits):
        self.box, self.limits = box, limits
        self.procs: list[subprocess.Popen] = []
        self._tmp = None if box.sandboxed else tempfile.TemporaryDirectory(prefix="chared-unsafe-")

    def start(self, mode: str, stdin: bytes, args: tuple[str, ...] = (), fds: tuple[int, ...] = (),
              stdout: int = subprocess.PIPE) -> subprocess.Popen:
        argv = [*self.box.prefix, self.box.python, "-I", "-S", "-c", _harness_source(), mode,
                json.dumps(self.limits.rlimits()), *args]
        with tempfile.TemporaryFile() as data:  # a file, not a pipe: writing it cannot block
            data.write(stdin)
            data.seek(0)
            proc = subprocess.Popen(
                argv, stdin=data, stdout=stdout, stderr=subprocess.PIPE, pass_fds=fds, env={},
                cwd=self._tmp.name if self._tmp else "/", start_new_session=True, **_user(self.box),
            )
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        # Subtle: bwrap is its group's leader; killing it kills its pid-namespace
        # init (--die-with-parent), and with it every process inside. Until the
        # wait below reaps it, its pid (the group's id) cannot be reused.
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        proc.kill()
        proc.wait()

    def __enter__(self) -> "_Session":
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            self.kill(proc)
        if self._tmp:
            self._tmp.cleanup()


class _Reader:
    """Reads several pipes at once, with a deadline and a cap on the bytes kept."""

    def __init__(self, streams: dict[str, IO[bytes]], cap: int):
        self.data = {name: bytearray() for name in streams}
        self.cap, self.overflow = cap, False
        self._selector = selectors.DefaultSelector()
        for name, stream in streams.items():
            self._selector.register(stream, selectors.EVENT_READ, name)

    def is_open(self, name: str) -> bool:
        return any(key.data == name for key in self._selector.get_map().values())

    def read(self, deadline: float, names: tuple[str, ...]) -> bool:
        """True once every stream in `names` has ended; False at the deadline or the cap."""
        while any(self.is_open(n) for n in names):
            left = deadline - time.monotonic()
            if left <= 0 or self.overflow:
                return False
            for key, _ in self._selector.select(left):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    self._selector.unregister(key.fileobj)
                    key.fileobj.close()
                    continue
                room = self.cap - sum(len(d) for d in self.data.values())
                self.data[key.data] += chunk[: max(room, 0)]
                self.overflow = self.overflow or len(chunk) > room
        return True

    def text(self, name: str) -> str:
        return self.data[name].decode("utf-8", "replace")

    def close(self) -> None:
        for key in list(self._selector.get_map().values()):
            self._selector.unregister(key.fileobj)
            key.fileobj.close()
        self._selector.close()


def _wait(proc: subprocess.Popen, deadline: float) -> bool:
    """True if `proc` exits before the deadline. Does not reap it (see _Session.kill)."""
    if not hasattr(os, "pidfd_open"):
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0))
            return True
        except subprocess.TimeoutExpired:
            return False
    pidfd = os.pidfd_open(proc.pid)
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(pidfd, selectors.EVENT_READ)
            return bool(selector.select(max(deadline - time.monotonic(), 0)))
    finally:
        os.close(pidfd)


def _cut_short(reader: _Reader, limits: Limits) -> tuple[str, str]:
    if reader.overflow:
        return "output_limit", f"output over {limits.output_bytes} bytes"
    return "timeout", f"killed after {limits.timeout_s}s"


# -- the two entry points ----------------------------------------------------------------------

def run_python(code: str, limits: Limits = Limits(), *, unsafe: bool = False) -> SandboxResult:
    """Run `code` in the box; `passed` is exit status 0, which the code itself decides."""
    box = box_for(unsafe)
    start = time.monotonic()
    deadline = start + limits.timeout_s
    with _Session(box, limits) as session:
        proc = session.start("run", code.encode())
        reader = _Reader({"stdout": proc.stdout, "stderr": proc.stderr}, limits.output_bytes)
        try:
            finished = reader.read(deadline, ("stdout", "stderr")) and _wait(proc, deadline)
            cut = None if finished else _cut_short(reader, limits)
            session.kill(proc)
            reader.read(time.monotonic() + GRACE_S, ("stdout", "stderr"))
        finally:
            reader.close()
    out, err, duration = reader.text("stdout"), reader.text("stderr"), time.monotonic() - start
    if cut:
        return SandboxResult(False, cut[0], cut[1], duration, out, err)
    if proc.returncode == 0:
        return SandboxResult(True, "passed", "", duration, out, err)
    if proc.returncode < 0:
        return SandboxResult(False, "error", f"killed by signal {-proc.returncode}: {err[-2000:]}", duration, out, err)
    return SandboxResult(False, "failed", err[-2000:], duration, out, err)


def run_check(prompt: str, completion: str, test: str, entry_point: str, limits: Limits = Limits(),
              *, unsafe: bool = False) -> SandboxResult:
    """HumanEval: does `check(entry_point)` of `test` pass for prompt + completion? (module docstring)"""
    box = box_for(unsafe)
    token = secrets.token_hex(16)
    job = json.dumps({"token": token, "prompt": prompt, "test": test, "entry_point": entry_point})
    start = time.monotonic()
    deadline = start + limits.timeout_s
    with _Session(box, limits) as session:
        requests_r, requests_w = os.pipe()  # judge -> worker: calls
        replies_r, replies_w = os.pipe()  # worker -> judge: return values
        try:
            worker = session.start("worker", (prompt + completion).encode(), (str(requests_r), str(replies_w), entry_point),
                                   (requests_r, replies_w), stdout=subprocess.DEVNULL)
            judge = session.start("judge", job.encode(), (str(requests_w), str(replies_r)), (requests_w, replies_r))
        finally:
            for fd in (requests_r, requests_w, replies_r, replies_w):
                os.close(fd)  # the two sandboxes hold the only ends now
        reader = _Reader({"verdict": judge.stdout, "judge": judge.stderr, "candidate": worker.stderr},
                         limits.output_bytes)
        try:
            finished = reader.read(deadline, ("verdict", "judge")) and _wait(judge, deadline)
            cut = None if finished else _cut_short(reader, limits)
            session.kill(worker)  # the verdict is in: a lingering candidate only wastes time
            session.kill(judge)
            reader.read(time.monotonic() + GRACE_S, ("verdict", "judge", "candidate"))
        finally:
            reader.close()
    duration = time.monotonic() - start
    tail = reader.text("candidate")[-1500:]
    if cut:
        return SandboxResult(False, cut[0], cut[1] + (f"; candidate stderr: {tail}" if tail else ""), duration, "", tail)
    verdict = _verdict(reader.text("verdict"), token)
    if verdict is None:
        detail = f"the judge gave no verdict: {reader.text('judge')[-1500:]}"
        return SandboxResult(False, "error", detail, duration, "", tail)
    if verdict.get("passed") is True:
        return SandboxResult(True, "passed", "", duration, "", tail)
    detail = str(verdict.get("detail", "")) + (f"; candidate stderr: {tail}" if tail else "")
    return SandboxResult(False, "failed", detail, duration, "", tail)


def _verdict(text: str, token: str) -> dict | None:
    lines = [line for line in text.splitlines() if line.startswith(token + " ")]
    if len(lines) != 1:
        return None
    try:
        verdict = json.loads(lines[0][len(token) + 1:])
    except ValueError:
        return None
    return verdict if isinstance(verdict, dict) else None
