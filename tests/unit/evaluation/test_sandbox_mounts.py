"""Every writable place in the sandbox has a size cap (docs/hostile-input.md lists them); writing past one fails."""

from __future__ import annotations

import json

import pytest

from chared_flows.evaluation import get_scorer, load_dataset
from chared_flows.evaluation.sandbox import TMP_BYTES, run_python, sandbox_unavailable_reason

UNAVAILABLE = sandbox_unavailable_reason()
needs_bwrap = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"bubblewrap unavailable ({UNAVAILABLE}); install it: apt-get install bubblewrap"
)
# The isolation table of docs/hostile-input.md: every writable mount and its cap.
WRITABLE = {"/tmp": TMP_BYTES, "/dev/shm": TMP_BYTES}
# Not storage: the pid namespace's /proc and the pty multiplexer take no files.
NOT_STORAGE = {"proc", "devpts"}

MOUNTS = r"""
import json, os
found = {}
for line in open("/proc/self/mounts"):
    dev, mnt, fs, opts = line.split()[:4]
    if opts.split(",")[0] != "rw" or fs in NOT_STORAGE or not os.path.isdir(mnt):
        continue  # read-only, not storage, or a device node bound in /dev
    st = os.statvfs(mnt)
    found[mnt] = st.f_blocks * st.f_frsize
print(json.dumps(found))
"""


@needs_bwrap
def test_the_only_writable_mounts_are_the_capped_ones():
    result = run_python(MOUNTS.replace("NOT_STORAGE", repr(NOT_STORAGE)))
    assert json.loads(result.stdout) == WRITABLE, result.stderr


FILL = r"""
import errno, json, os
written, errors = {}, {}
for root in ROOTS:
    written[root] = 0
    try:
        for i in range(12):  # 12 files just under RLIMIT_FSIZE: 180 MiB, past every cap
            with open(os.path.join(root, f"fill{i}"), "wb") as handle:
                handle.write(b"x" * (15 << 20))
            written[root] += 15 << 20
    except OSError as exc:
        errors[root] = errno.errorcode[exc.errno]
print(json.dumps([written, errors]))
"""


@needs_bwrap
def test_writing_past_each_cap_fails():
    roots = ["/", "/dev", "/usr", *WRITABLE]
    result = run_python(FILL.replace("ROOTS", repr(roots)))
    written, errors = json.loads(result.stdout)
    assert errors == {"/": "EROFS", "/dev": "EROFS", "/usr": "EROFS", "/tmp": "ENOSPC", "/dev/shm": "ENOSPC"}
    assert written["/"] == written["/dev"] == written["/usr"] == 0
    assert all(written[root] <= cap for root, cap in WRITABLE.items())


@needs_bwrap
def test_a_completion_that_fills_the_disk_does_not_pass():
    problem = load_dataset({"kind": "humaneval", "limit": 1})[0]
    scorer = get_scorer("pass_at_1")
    body = problem.meta["canonical_solution"]
    assert scorer.score(problem, body, None)["pass_at_1"] == 1.0
    for root in ("/", "/tmp", "/dev/shm"):
        fill = (f"    for i in range(12):\n"
                f"        open('{root.rstrip('/')}/fill' + str(i), 'wb').write(b'x' * (15 << 20))\n")
        assert scorer.score(problem, fill + body, None)["pass_at_1"] == 0.0, root
