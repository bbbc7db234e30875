"""Shipping a combination: the versioned object, the model registry, live A/B routing.

    combination.py       the content-addressed Combination (members + fingerprints, DecodeConfig, template, evidence)
    fingerprints.py      a content fingerprint of each member's files
    evidence.py          an A/B run's variant -> Combination (the one reader of the report's layout)
    registry.py          MLflow Model Registry: promote, load back by models:/NAME@ALIAS   (mlflow)
    pyfunc.py            the pyfunc model; mlflow_model_code.py is the models-from-code file (mlflow)

Modules that import an optional SDK are imported only where they are used.
"""

from chared_flows.combinations.combination import Combination, TemplateRef, make_combination

__all__ = ["Combination", "TemplateRef", "make_combination"]
