"""Datasets, scorers and A/B aggregation."""

from chared_flows.evaluation.base import (
    Sample,
    Scorer,
    get_scorer,
    load_dataset,
    register_dataset,
    register_scorer,
)

__all__ = ["Sample", "Scorer", "get_scorer", "load_dataset", "register_dataset", "register_scorer"]
