"""Shipping a combination: the versioned object, the model registry, live A/B routing.

    combination.py       the content-addressed Combination (members + fingerprints from decoding/backends/fingerprints.py, pinned backends, DecodeConfig, template, evidence)
    evidence.py          an A/B run's variant -> Combination (the one reader of the report's layout)
    registry.py          MLflow Model Registry: promote, load back by models:/NAME@ALIAS   (mlflow)
    pyfunc.py            the pyfunc model; mlflow_model_code.py is the models-from-code file (mlflow)
    routing.py           sticky salted traffic splits (stdlib)
    router.py            LiveRouter, the LangChain runnable of a live A/B                   (langchain_core)
    live_mlflow.py       assignments as MLflow trace tags, feedback as assessments, reading them back (mlflow)
    live_promptlayer.py  release labels on promotion; routed calls as requests, feedback as scores (promptlayer)
    live_stats.py        the live report: unpaired two-sample tests, Holm
    live.py              feedback() and the live report from stored traces (no LangChain)
    guard.py             the guarded rollout's always-valid sequential test (mSPRT) and its simulation

Modules that import an optional SDK are imported only where they are used.
"""

from chared_flows.combinations.combination import Combination, TemplateRef, make_combination

__all__ = ["Combination", "TemplateRef", "make_combination"]
