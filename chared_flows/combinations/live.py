"""The live A/B entry points that need no LangChain: `feedback` and the live report from stored traces."""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

from chared_flows.combinations.live_stats import LiveReport, live_report
from chared_flows.errors import ConfigError

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def feedback(trace_id: str, name: str, value: Any, *, source: str | None = None,
             tracking_uri: str | None = None) -> None:
    """Attach a user's score to a routed call's MLflow trace (as MLflow feedback)."""
    from chared_flows.combinations.live_mlflow import MlflowRecorder

    if not isinstance(name, str) or not name:
        raise ConfigError(f"feedback name {name!r} must be a non-empty string, e.g. 'thumbs_up'")
    MlflowRecorder(tracking_uri).feedback(trace_id, name, value, source)


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """`--since`: an ISO time (2026-12-02T10:00, UTC unless it says otherwise) or an age like 30m, 24h, 7d."""
    if text is None:
        return None
    match = _RELATIVE.match(text.strip())
    if match:
        return (now if now is not None else time.time()) - float(match[1]) * _UNITS[match[2]]
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--since {text!r} is neither an ISO time (2026-12-02T10:00) nor an age (30m, 24h, 7d)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def report_from_traces(experiment: str, since: float | None = None, control: str | None = None,
                       tracking_uri: str | None = None, alpha: float = 0.05) -> tuple[LiveReport, int]:
    """The live report of an experiment from its MLflow traces and their feedback; (report, traces read)."""
    from chared_flows.combinations.live_mlflow import observations

    found, n, recorded_control = observations(experiment, since, tracking_uri)
    if n == 0:
        raise ConfigError(f"no traces of live experiment {experiment!r} in the MLflow store"
                          f"{' since then' if since else ''}; route calls with a LiveRouter first "
                          "(or check MLFLOW_TRACKING_URI)")
    control = control or recorded_control
    arms = sorted({o.arm for o in found})
    if control not in arms and arms:
        raise ConfigError(f"control arm {control!r} has no feedback in {experiment!r}; arms with feedback: "
                          f"{', '.join(arms)} (choose one with --control)")
    return live_report(experiment, found, control, alpha=alpha), n
