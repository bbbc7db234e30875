"""Tracking layer: the Tracker protocol, MLflow and PromptLayer trackers, the outbox.

Sees only `chared_flows.records` and `chared_flows.errors`; mlflow and
promptlayer are imported lazily inside their own modules.
"""

from chared_flows.tracking.base import FanOut, Tracker
from chared_flows.tracking.factory import make_tracker, make_trackers

__all__ = ["FanOut", "Tracker", "make_tracker", "make_trackers"]
