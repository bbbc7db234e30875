"""Many decodings at once (Ensemble.generate_batch / stream_batch): threads whose passes batch."""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

from chared_flows.decoding.generation import Generation, StreamingGeneration

DEFAULT_BATCH_SIZE = 8  # concurrent decodings of generate_batch (a batched forward of 8 costs ~0.2-0.3x per sequence)


def run_concurrently(runs: list[Generation], workers: int, stream: bool) -> Iterator[tuple[int, Any]]:
    """Run decodings in threads; yield (index, chunk) while streaming, else (index, result) as each ends.

    An error in one decoding is raised here once the others have stopped (none is lost
    silently, none keeps running unattended); a caller that stops iterating cancels them.
    """
    events: queue.Queue = queue.Queue()
    done = object()
    workers = min(workers, max(1, len(runs)))

    begun: set[int] = set()

    def work(index: int, run: Generation) -> None:
        begun.add(index)
        if index >= workers:
            run.client.register()  # its turn came: another run just ended
        try:
            if stream:
                streaming = StreamingGeneration(run, registered=True)
                for chunk in streaming:
                    events.put((index, chunk))
            else:
                for _ in run.chars(registered=True):
                    pass
                events.put((index, run.result()))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            events.put((index, exc))
        finally:
            events.put((index, done))

    # The first `workers` register before any starts: a scheduler must not run a batch of
    # the first few alone.
    for run in runs[:workers]:
        run.client.register()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chared-decode")
    finished, failure = 0, None
    try:
        for index, run in enumerate(runs):
            pool.submit(work, index, run)
        while finished < len(runs):
            index, item = events.get()
            if item is done:
                finished += 1
            elif isinstance(item, BaseException):
                failure = failure or item
                for other in runs:
                    other.cancel()
            elif failure is None:
                yield index, item
    finally:
        if finished < len(runs):  # the caller stopped early, or an error: stop the rest
            for run in runs:
                run.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        for index, run in enumerate(runs[:workers]):
            if index not in begun:
                run.client.unregister()  # registered up front, never started
    if failure is not None:
        raise failure
