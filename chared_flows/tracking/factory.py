"""Build the trackers a workflow names: `make_trackers(["mlflow", "promptlayer"])`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chared_flows.errors import ConfigError
from chared_flows.tracking.base import FanOut, Tracker

KNOWN = ("mlflow", "promptlayer")


def make_tracker(name: str, root: Path | None = None, **options: Any) -> Tracker:
    if name == "mlflow":
        from chared_flows.tracking.mlflow import MlflowTracker

        return MlflowTracker(**options)
    if name == "promptlayer":
        from chared_flows.tracking.promptlayer import PromptLayerTracker

        return PromptLayerTracker(root, **options)
    raise ConfigError(f"unknown tracker {name!r}; use one of: {', '.join(KNOWN)}")


def make_trackers(
    names: list[str], root: Path | None = None, options: dict[str, dict[str, Any]] | None = None
) -> FanOut:
    """One FanOut over the named trackers; `options[name]` goes to that tracker's constructor.

    A tracker that cannot be built (missing extra, missing PROMPTLAYER_API_KEY)
    raises here, before any decoding starts: a config error, not a run failure.
    """
    options = options or {}
    return FanOut(make_tracker(name, root, **options.get(name, {})) for name in names)
