"""Two processes convert the same real GGUF file into one empty cache at once (select with -m integration).

Ray workers or parallel runs on a fresh cache do this; before publish_dir the second rename
found the first's directory and the process died with OSError (ENOTEMPTY).
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _convert(root: str, start, out) -> None:
    from chared_flows.decoding.backends.files import EMBEDDED
    from chared_flows.decoding.backends.loading import convert_gguf

    gguf = EMBEDDED["smollm2"](Path(root))
    start.wait(timeout=120)  # both processes have imported transformers: the conversions overlap
    try:
        out.put(("ok", str(convert_gguf(gguf, Path(root)))))
    except Exception as exc:  # noqa: BLE001 - reported to the test, which names it
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def test_two_processes_converting_one_file_at_once_both_get_the_directory(tmp_path):
    try:
        from chared_flows.decoding.backends.files import EMBEDDED

        EMBEDDED["smollm2"](tmp_path)
    except Exception as exc:  # noqa: BLE001 - the embedded model packages are an optional extra
        pytest.skip(f"embedded model unavailable: {exc}")
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_convert, args=(str(tmp_path), start, out)) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        results = [out.get(timeout=600) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
    assert [status for status, _ in results] == ["ok", "ok"], results
    assert results[0][1] == results[1][1]
    folders = [p.name for p in Path(results[0][1]).parent.iterdir()]
    assert not [name for name in folders if name.startswith(".tmp-")], folders  # no staging copy left behind
