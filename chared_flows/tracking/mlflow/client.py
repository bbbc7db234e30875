"""The MLflow SDK and its store: importing it safely, which store, a client, the global URI.

The only place the tracking package imports `mlflow` itself; the other modules ask `_mlflow()`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from chared_flows.errors import MissingExtraError


def _mlflow():
    # Subtle: telemetry must be off before mlflow is imported; it reads the
    # variable at import time and otherwise tries to reach the internet.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # subtle: against an unreachable server MLflow's REST client retries each call with
    # exponential backoff for minutes (7 retries, 120 s timeout). A tracker must not hold
    # up decoding that long, so unless the user chose otherwise: 2 retries, 10 s.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # Traces are exported when they end, not by a background queue that a short-lived
    # CLI process may exit before draining.
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    # Against a server, ending a run prints "View run ... at: URL" to *stdout*, which would
    # corrupt the JSON summary `chared run` prints there.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        import mlflow
    except ImportError as exc:
        raise MissingExtraError("mlflow", "tracking") from exc
    return mlflow


def default_tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else a SQLite file under `<root>/.chared/`."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    folder = Path(root or Path.cwd()).resolve() / ".chared"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _local_artifact_root(tracking_uri: str) -> str | None:
    """For a local sqlite store, keep artifacts next to the database, not in ./mlruns."""
    if not tracking_uri.startswith("sqlite:///"):
        return None  # a server decides where artifacts go
    db = Path(tracking_uri[len("sqlite:///"):])
    return (db.parent / "mlartifacts").resolve().as_uri()


def make_client(tracking_uri: str | None = None):
    mlflow = _mlflow()
    uri = tracking_uri or default_tracking_uri()
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), uri


@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's *global* tracking URI at `uri` for a block, then put it back.

    subtle: two MLflow features ignore the client's URI and use the global one: the trace
    exporter (a trace started by `client.start_trace` is exported to the global store)
    and `link_prompt_version_to_run` (it looks the run up in the global store).
    """
    mlflow = _mlflow()
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    if before == uri:
        yield
        return
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def _short(exc: BaseException) -> str:
    """The first line of an exception, trimmed: enough to name the cause in one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"
