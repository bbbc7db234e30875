"""The sandbox holds against hostile completions: each attack runs, and its effect is absent.

The attacks are the ones that got through the audit-hook sandbox (issue 10), plus the
classic ones. Every test checks the effect outside (a file unchanged or not created, a
secret not in what the code could print, no process left behind), not an error message.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from chared_flows.evaluation import get_scorer, load_dataset
from chared_flows.evaluation import sandbox
from chared_flows.evaluation.sandbox import Limits, box_for, run_check, run_python, sandbox_unavailable_reason

REPO = Path(__file__).resolve().parents[3]
GENEROUS_S = 10.0  # "returns at all, long before the old 15 s": never an exact time
UNAVAILABLE = sandbox_unavailable_reason()
needs_bwrap = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"bubblewrap unavailable ({UNAVAILABLE}); install it: apt-get install bubblewrap"
)


@pytest.fixture(scope="module")
def problems():
    return load_dataset({"kind": "humaneval", "limit": 2})


@pytest.fixture
def secret_file(tmp_path):
    secret = "file-secret-" + secrets.token_hex(8)
    path = tmp_path / "api_key.txt"
    path.write_text(secret)
    return path, secret


@pytest.fixture
def decoy():
    """A process like `chared` itself: an API key in its environment."""
    secret = "env-secret-" + secrets.token_hex(8)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                            env={"PROMPTLAYER_API_KEY": secret})
    yield proc, secret
    proc.kill()
    proc.wait()


@pytest.fixture
def visible_file():
    """A file the sandbox can see (under /usr, bound read-only), planted by the test."""
    base = "/usr/local/share"
    if not os.access(base, os.W_OK):
        pytest.skip(f"needs write access to {base} to plant a file the sandbox can see")
    folder = Path(tempfile.mkdtemp(prefix="chared-sandbox-test-", dir=base))
    folder.chmod(0o755)
    target = folder / "target.txt"
    target.write_text("original")
    target.chmod(0o644)
    yield target
    shutil.rmtree(folder)


def leftovers(marker: str) -> list[int]:
    """Processes still alive whose command line ends with `marker` (killed here, so a
    failing test leaves nothing behind)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[-1] == marker:
            found.append(proc.pid)
            proc.kill()
    return found


def shadow_line() -> str | None:
    try:
        return Path("/etc/shadow").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None


def score(sample, completion: str, **options) -> float:
    return get_scorer("pass_at_1", **options).score(sample, completion, None)["pass_at_1"]


# -- what must still work -----------------------------------------------------------------

@needs_bwrap
def test_canonical_solution_passes_and_wrong_ones_fail(problems):
    p = problems[0]
    assert score(p, p.meta["canonical_solution"]) == 1.0
    assert score(p, "    return False\n") == 0.0
    assert score(p, "    return undefined_name\n") == 0.0


@needs_bwrap
def test_all_canonical_humaneval_solutions_pass():
    failed = []
    for p in load_dataset({"kind": "humaneval"}):
        result = run_check(p.inputs["prompt"], p.meta["canonical_solution"], p.reference["test"],
                           p.reference["entry_point"])
        if not result.passed:
            failed.append((p.id, result.status, result.detail[:200]))
    assert failed == []


@needs_bwrap
def test_code_may_use_its_own_directory_and_the_stdlib():
    code = "import json, math, hashlib, collections\nopen('f.txt', 'w').write('x')\nassert open('f.txt').read() == 'x'\n"
    result = run_python(code)
    assert result.passed, result.detail


@needs_bwrap
def test_inside_is_nobody_with_an_empty_environment(monkeypatch):
    monkeypatch.setenv("CHARED_TEST_SECRET", "in-parent-env")
    result = run_python("import os, json; print(json.dumps([os.getuid(), os.getgid(), dict(os.environ)]))")
    uid, gid, env = json.loads(result.stdout)
    assert (uid, gid) == (65534, 65534)
    assert "in-parent-env" not in result.stdout and "PATH" not in env


@needs_bwrap
def test_a_failed_check_says_which_test_line(problems):
    p = problems[0]
    result = run_check(p.inputs["prompt"], "    return False\n", p.reference["test"], p.reference["entry_point"])
    assert result.status == "failed" and "AssertionError at <test>:" in result.detail


# -- a pass must be earned ----------------------------------------------------------------

FORGERIES = {
    "sys.exit(0) before the tests": "    pass\nimport sys\nsys.exit(0)\n",
    "os._exit(0) before the tests": "    pass\nimport os\nos._exit(0)\n",
    "SystemExit raised inside check": "    raise SystemExit(0)\n",
    "os._exit(0) inside check": "    import os; os._exit(0)\n",
    "printing sentinels then exiting": (
        "    import os, sys\n"
        "    for line in ('passed', 'PASS', '{\"passed\": true}', '0' * 32 + ' {\"passed\": true, \"detail\": \"\"}'):\n"
        "        print(line); print(line, file=sys.stderr); os.write(1, (line + '\\n').encode())\n"
        "    os._exit(0)\n"
    ),
    "forged verdict on every descriptor and /proc/*/fd": (
        "    import os, glob\n"
        "    forged = ('0' * 32 + ' {\"passed\": true, \"detail\": \"\"}\\n').encode()\n"
        "    for fd in range(256):\n"
        "        try: os.write(fd, forged)\n"
        "        except OSError: pass\n"
        "    for path in glob.glob('/proc/*/fd/*'):\n"
        "        try:\n"
        "            with open(path, 'wb') as f: f.write(forged)\n"
        "        except OSError: pass\n"
        "    os._exit(0)\n"
    ),
    "harness globals overwritten": (
        "    return True\n"
        "import sys\n"
        "_harness = sys.modules['__main__']\n"
        "for _name in list(vars(_harness)):\n"
        "    if not _name.startswith('__'):\n"
        "        setattr(_harness, _name, lambda *a, **k: True)\n"
    ),
    "the old guard's globals unlocked": "    return True\n_inside = lambda p: True\n_DENY_EVENTS.clear()\n",
    "an object equal to everything": (
        "    class Anything:\n"
        "        def __eq__(self, other): return True\n"
        "    return Anything()\n"
    ),
    "builtins patched to swallow assertions": (
        "    return True\nimport builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\n"
    ),
}


@needs_bwrap
@pytest.mark.parametrize("completion", FORGERIES.values(), ids=FORGERIES.keys())
def test_forged_passes_are_failures(problems, completion):
    assert score(problems[0], completion) == 0.0


@needs_bwrap
def test_the_worker_cannot_see_the_judge(problems):
    spy = (  # the harness's mode is the argument after its source: python -I -S -c SOURCE MODE
        "    import sys, glob\n"
        "    argvs = [open(p, 'rb').read().split(b'\\0') for p in glob.glob('/proc/[0-9]*/cmdline')]\n"
        "    print('modes', sorted({a[a.index(b'-c') + 2].decode() for a in argvs if b'-c' in a}), file=sys.stderr)\n"
        "    return False\n"
    )
    p = problems[0]
    result = run_check(p.inputs["prompt"], spy, p.reference["test"], p.reference["entry_point"])
    assert not result.passed
    assert "modes ['worker']" in result.stderr  # it looked, and found only itself (and bwrap's init)


# -- the boundary: files, secrets, processes -------------------------------------------------

FORK_EXEC = r"""
import _posixsubprocess, os
def spawn(script):
    r, w = os.pipe()
    errpipe_r, errpipe_w = os.pipe()
    pid = _posixsubprocess.fork_exec(
        [b"/bin/sh", b"-c", script.encode()], [b"/bin/sh"], True, (w,), None, None,
        -1, -1, -1, w, -1, -1, errpipe_r, errpipe_w, False, False, -1, None, None, None, -1, None, False)
    os.close(w); os.close(errpipe_w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.waitpid(pid, 0)
    return out.decode(errors="replace")
print(spawn("echo ran-inside; echo pwned > OUTSIDE; cat /etc/shadow; cat SECRET; cat /proc/*/environ | tr '\\0' '\\n'"))
print("children", sum(1 for _ in range(5) if spawn("echo child")))
"""


@needs_bwrap
def test_fork_exec_shell_writes_and_reads_nothing_outside(tmp_path, secret_file, decoy):
    outside = tmp_path / "pwned.txt"
    (secret_path, secret), (_proc, env_secret) = secret_file, decoy
    code = FORK_EXEC.replace("OUTSIDE", str(outside)).replace("SECRET", str(secret_path))
    result = run_python(code)
    assert "ran-inside" in result.stdout  # the shell did start, inside
    assert not outside.exists()
    assert secret not in result.stdout + result.stderr
    assert env_secret not in result.stdout + result.stderr
    shadow = shadow_line()
    assert shadow is None or shadow not in result.stdout + result.stderr


READ_EVERYTHING = r"""
import glob, os
def show(path):
    try:
        with open(path, "rb") as f:
            print(path, f.read(100000))
    except OSError as e:
        print(path, "refused:", e)
for path in ["/etc/shadow", "/etc/passwd", "SECRET"] + glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
    show(path)
for path in ["SECRET", "/etc/shadow"]:
    try:
        os.link(path, "/tmp/linked")
        show("/tmp/linked")
    except OSError as e:
        print("link", path, "refused:", e)
print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
"""


@needs_bwrap
def test_secrets_outside_cannot_be_read(secret_file, decoy):
    (secret_path, secret), (_proc, env_secret) = secret_file, decoy
    result = run_python(READ_EVERYTHING.replace("SECRET", str(secret_path)))
    seen = result.stdout + result.stderr
    assert "refused" in seen  # it did try
    assert secret not in seen and env_secret not in seen
    shadow = shadow_line()
    assert shadow is None or shadow not in seen
    pids = json.loads(seen.rsplit("pids ", 1)[1])
    assert max(pids) < 16  # its own pid namespace: bwrap's init, itself, nothing of the host


@needs_bwrap
def test_home_and_project_are_not_visible():
    code = (
        "import json, os\n"
        "def ls(path):\n"
        "    try: return os.listdir(path)\n"
        "    except OSError as e: return str(e)\n"
        f"print(json.dumps({{p: ls(p) for p in ['/root', '/home', '/etc', '/work', {str(REPO)!r}]}}))\n"
    )
    seen = json.loads(run_python(code).stdout)
    python = box_for().python
    for path, listing in seen.items():
        if isinstance(listing, str):
            continue  # not there at all
        # only the directories on the way to the bound Python install may show
        assert all(python.startswith(os.path.join(path, name) + "/") for name in listing), (path, listing)


OPERATIONS = r"""
import json, os
done = []
def attempt(name, fn):
    try:
        fn()
        done.append(name)
    except OSError:
        pass
for target in TARGETS:
    folder = os.path.dirname(target)
    attempt("truncate " + target, lambda: os.truncate(target, 0))
    attempt("chmod " + target, lambda: os.chmod(target, 0o777))
    attempt("chown " + target, lambda: os.chown(target, 65534, 65534))
    attempt("utime " + target, lambda: os.utime(target, (0, 0)))
    attempt("append " + target, lambda: open(target, "a").write("pwned"))
    attempt("mkdir in " + folder, lambda: os.mkdir(folder + "/pwned-dir"))
    attempt("symlink in " + folder, lambda: os.symlink("/tmp", folder + "/pwned-link"))
    attempt("hard link in " + folder, lambda: os.link(target, folder + "/pwned-hardlink"))
    attempt("hard link out of " + folder, lambda: os.link(target, "/tmp/hardlink"))
    attempt("rename " + target, lambda: os.rename(target, target + ".moved"))
    attempt("remove " + target, lambda: os.remove(target))
    attempt("create in " + folder, lambda: open(folder + "/pwned.txt", "w").write("x"))
print(json.dumps(done))
"""


@needs_bwrap
def test_files_outside_cannot_be_changed(tmp_path, visible_file):
    hidden = tmp_path / "keep.txt"
    hidden.write_text("original")
    targets = [str(visible_file), str(hidden)]
    before = {t: (Path(t).read_text(), Path(t).stat().st_mode, Path(t).stat().st_mtime, sorted(os.listdir(Path(t).parent)))
              for t in targets}
    result = run_python(OPERATIONS.replace("TARGETS", repr(targets)))
    assert json.loads(result.stdout) == []
    after = {t: (Path(t).read_text(), Path(t).stat().st_mode, Path(t).stat().st_mtime, sorted(os.listdir(Path(t).parent)))
             for t in targets}
    assert after == before


@needs_bwrap
def test_the_virtualenv_is_not_writable():
    site = Path(sysconfig.get_path("purelib"))  # this test's venv: a .pth here runs in every later process
    planted = [site / "chared_sandbox_attack.pth", Path(sys.prefix) / "chared_sandbox_attack.txt"]
    code = "".join(
        f"try:\n    open({str(p)!r}, 'w').write('import os')\nexcept OSError as e:\n    print('refused', e)\n"
        for p in planted
    )
    try:
        result = run_python(code)
        assert result.stdout.count("refused") == 2
        assert not any(p.exists() for p in planted)
    finally:
        for p in planted:
            p.unlink(missing_ok=True)


@needs_bwrap
def test_network_is_unreachable_even_loopback():
    with socket.socket() as listener:  # reachable from this process...
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code = (
            "import socket\n"
            f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('connected')\n"
            "except OSError as e:\n    print('refused', e)\n"
        )
        result = run_python(code)
    assert "refused" in result.stdout and "connected" not in result.stdout


@needs_bwrap
def test_processes_outside_cannot_be_signalled(decoy):
    # Subtle: aimed at the decoy's pid, not kill(-1): should the boundary ever
    # regress, this test must fail, not kill every process on the machine.
    proc, _secret = decoy
    code = f"import os, signal\ntry:\n    os.kill({proc.pid}, signal.SIGKILL)\nexcept OSError as e:\n    print('refused', e)\n"
    result = run_python(code)
    assert "refused" in result.stdout
    assert proc.poll() is None  # the decoy outside is alive


# -- time, processes, memory, output ----------------------------------------------------------

def sleeper(marker: str, daemon: str) -> str:
    """Code that leaves a `sleep <marker>` behind (in its own session), then does `daemon`."""
    return (
        "import os\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', {marker!r}])\n"
        "    os._exit(0)\n"
        f"{daemon}\n"
    )


@needs_bwrap
def test_setsid_grandchild_holding_the_pipe_is_killed_with_the_run():
    marker = str(random.randint(10**6, 10**7))
    start = time.monotonic()
    result = run_python(sleeper(marker, "while True:\n    pass"), Limits(timeout_s=2))
    assert result.status == "timeout"
    assert time.monotonic() - start < GENEROUS_S  # the old sandbox waited for the grandchild (15 s)
    assert leftovers(marker) == []


@needs_bwrap
def test_grandchild_that_never_exits_does_not_outlive_a_finished_run():
    marker = str(random.randint(10**6, 10**7))
    start = time.monotonic()
    result = run_python(sleeper(marker, "print('main done')"), Limits(timeout_s=30))
    assert result.passed and "main done" in result.stdout
    assert time.monotonic() - start < GENEROUS_S
    assert leftovers(marker) == []


@needs_bwrap
def test_lingering_grandchild_of_a_completion_does_not_hold_the_verdict(problems):
    marker = str(random.randint(10**6, 10**7))
    p = problems[0]
    completion = p.meta["canonical_solution"] + sleeper(marker, "")
    start = time.monotonic()
    assert score(p, completion, timeout_s=30) == 1.0  # a right answer, with a mess behind it
    assert time.monotonic() - start < GENEROUS_S
    assert leftovers(marker) == []


@needs_bwrap
def test_infinite_loop_is_killed_then_evaluation_goes_on(problems):
    p = problems[0]
    assert score(p, "    while True:\n        pass\n", timeout_s=1.0) == 0.0
    assert score(p, p.meta["canonical_solution"]) == 1.0


@needs_bwrap
def test_processes_are_capped():
    code = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(200):  # bounded, in case the limit ever regresses\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError:\n"
        "    pass\n"
        "print('forks', n)\n"
    )
    result = run_python(code, Limits(processes=16, timeout_s=20))
    assert result.passed, result.detail
    forks = int(result.stdout.split()[1])
    assert forks < 16  # the box's init and the harness count too


@needs_bwrap
def test_fork_bomb_ends_with_the_run():
    marker = f"{random.randint(10**6, 10**7)}"
    # Every process forks as long as it can (at most 2**10 of them, should the limit regress).
    code = (f"import os\nfor _ in range(10):\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
            f"os.execv('/bin/sleep', ['sleep', {marker!r}])\n")
    start = time.monotonic()
    result = run_python(code, Limits(timeout_s=3))
    assert not result.passed
    assert time.monotonic() - start < GENEROUS_S
    assert leftovers(marker) == []


@needs_bwrap
def test_memory_bomb_is_stopped():
    result = run_python("x = bytearray(8 << 30)", Limits(memory_bytes=512 << 20))
    assert not result.passed and "MemoryError" in result.stderr


@needs_bwrap
def test_huge_output_is_cut_and_ends_the_run():
    start = time.monotonic()
    result = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
                        Limits(output_bytes=200_000, timeout_s=30))
    assert result.status == "output_limit"
    assert len(result.stdout) + len(result.stderr) <= 200_000
    assert time.monotonic() - start < GENEROUS_S


@needs_bwrap
def test_huge_output_of_a_completion_fails_it(problems):
    completion = "    import sys\n    while True:\n        sys.stderr.write('y' * 65536)\n"
    assert score(problems[0], completion) == 0.0


# -- without bubblewrap ------------------------------------------------------------------------

@pytest.fixture
def no_bwrap(monkeypatch):
    monkeypatch.setattr(sandbox, "_find_bwrap", lambda: None)
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    sandbox._bwrap_box.cache_clear()
    sandbox._warn_unsafe.cache_clear()
    yield monkeypatch
    sandbox._bwrap_box.cache_clear()


def test_without_bubblewrap_generated_code_is_refused_in_one_line(no_bwrap):
    with pytest.raises(sandbox.SandboxUnavailableError) as refused:
        get_scorer("pass_at_1")
    message = str(refused.value)
    assert "\n" not in message
    assert "apt-get install bubblewrap" in message and "CHARED_UNSAFE_EXEC=1" in message
    with pytest.raises(sandbox.SandboxUnavailableError):
        run_python("print(1)")


def test_chared_refuses_a_humaneval_workflow_without_bubblewrap(no_bwrap, capsys):
    from chared_flows.cli import main

    code = main(["--workflows-dir", str(REPO / "workflows"), "--templates-dir", str(REPO / "templates"),
                 "workflows", "validate", "ab_humaneval"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "apt-get install bubblewrap" in err


@pytest.mark.parametrize("opt_in", ["env", "option"])
def test_explicit_opt_in_runs_unsandboxed(no_bwrap, problems, opt_in):
    options = {"unsafe_exec": True} if opt_in == "option" else {}
    if opt_in == "env":
        no_bwrap.setenv(sandbox.UNSAFE_ENV, "1")
    p = problems[0]
    with pytest.warns(RuntimeWarning, match="WITHOUT a sandbox"):
        scorer = get_scorer("pass_at_1", **options)
    assert scorer.score(p, p.meta["canonical_solution"], None) == {"pass_at_1": 1.0}
    assert scorer.score(p, "    import os; os._exit(0)\n", None) == {"pass_at_1": 0.0}
