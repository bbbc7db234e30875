"""Cancelling decodings from another thread: a token, and the scope that hands it to decodings."""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator


class CancelToken:
    """Stops the decodings started under it (see `cancellable`) at their next step."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


_cancel_scope = threading.local()


@contextlib.contextmanager
def cancellable(token: CancelToken) -> Iterator[CancelToken]:
    """Decodings started in this thread while inside stop once `token.cancel()` is called.

    A caller running decodings in worker threads (the workflow runner) enters it in each
    worker, so an interrupted run does not wait for every generation in flight to finish.
    A cancelled generation ends with finish_reason "cancelled".
    """
    previous = getattr(_cancel_scope, "token", None)
    _cancel_scope.token = token
    try:
        yield token
    finally:
        _cancel_scope.token = previous


def current_token() -> CancelToken | None:
    """The CancelToken the calling thread runs under, if any (a decoding takes it when it starts)."""
    return getattr(_cancel_scope, "token", None)


def cancel_requested() -> bool:
    """Whether the calling thread runs under a CancelToken that was cancelled."""
    token = current_token()
    return token is not None and token.cancelled
