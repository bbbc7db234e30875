"""The pass scheduler at interpreter exit: a running batch finishes, nothing else starts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch

from chared_flows.decoding.backends.scheduler import PassScheduler

REPO = Path(__file__).resolve().parents[3]


class SlowBackend:
    """Each batched call takes `seconds`; `started` is set when the first one begins."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started = threading.Event()

    def next_logits_batch(self, runners, token_ids):
        self.started.set()
        time.sleep(self.seconds)
        return [torch.tensor([float(len(ids))]) for ids in token_ids]


def test_close_waits_for_the_running_batch_cancels_the_queue_and_refuses_more():
    backend = SlowBackend(0.5)
    scheduler = PassScheduler(backend, max_batch=1)
    running = scheduler.submit(None, [1, 2, 3], lambda logits: float(logits[0]))
    assert backend.started.wait(5)
    queued = scheduler.submit(None, [1], lambda logits: float(logits[0]))
    worker = scheduler._worker
    scheduler.close(timeout=10)
    assert running.result(timeout=0) == 3.0  # finished before close returned
    assert queued.cancelled() and not worker.is_alive()
    refused: Future = scheduler.submit(None, [1], lambda logits: logits)
    with pytest.raises(RuntimeError, match="interpreter is exiting"):
        refused.result(timeout=0)


def test_a_process_that_exits_during_a_pass_exits_cleanly_with_its_output():
    """Before the exit hook, torch aborted here ("terminate called without an active exception",
    SIGABRT) after the work was done."""
    script = textwrap.dedent("""
        import time, torch
        from chared_flows.decoding.backends.scheduler import PassScheduler

        class Busy:  # a pass inside torch's kernels, the GIL released, when the main thread ends
            def next_logits_batch(self, runners, token_ids):
                a = torch.randn(1200, 1200)
                end = time.monotonic() + 1.5
                while time.monotonic() < end:
                    a = torch.tanh(a @ a)
                return [a[0] for _ in runners]

        PassScheduler(Busy()).submit(None, [1], lambda logits: logits)
        time.sleep(0.3)
        print("printed before exit")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "printed before exit"), done.stderr[-2000:]
