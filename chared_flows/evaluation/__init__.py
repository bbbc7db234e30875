"""Datasets, scorers and A/B aggregation."""

from chared_flows.evaluation.base import (
    Sample,
    Scorer,
    get_scorer,
    load_dataset,
    register_dataset,
    register_scorer,
)

# Importing these registers the datasets and scorers with base.
from chared_flows.evaluation import datasets as _datasets  # noqa: E402,F401
from chared_flows.evaluation import scorers as _scorers  # noqa: E402,F401

__all__ = ["Sample", "Scorer", "get_scorer", "load_dataset", "register_dataset", "register_scorer"]
