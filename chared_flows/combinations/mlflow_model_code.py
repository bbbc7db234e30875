"""The models-from-code file MLflow logs with each combination (never imported by the package).

MLflow runs this file when the model loads; `set_model` hands it the pyfunc model, and the
combination arrives as the model's JSON config (`context.model_config`).
"""

import mlflow

from chared_flows.combinations.pyfunc import CombinationModel

mlflow.models.set_model(CombinationModel())
