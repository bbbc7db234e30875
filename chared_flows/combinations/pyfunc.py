"""The pyfunc model of a combination: `predict` on prompts (or rows of template variables) returns texts.

    model = mlflow.pyfunc.load_model("models:/NAME@champion")
    model.predict(["Q: 2+2?\\nA:"])                         # -> ["4", ...]
    model.predict(pd.DataFrame({"prompt": ["..."]}))          # a "prompt" column
    model.predict(pd.DataFrame({"question": ["..."]}))        # the template's variables

Loading checks each member's fingerprint first: a member whose files changed is refused.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc

from chared_flows.combinations.combination import Combination
from chared_flows.errors import ConfigError


def as_items(model_input: Any) -> list[Any]:
    """A list of prompts or variable dicts from a list, a str, a numpy array, a Series or a DataFrame."""
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # a DataFrame
        return model_input.to_dict(orient="records")
    if hasattr(model_input, "tolist"):  # a numpy array or a Series
        model_input = model_input.tolist()
    if isinstance(model_input, dict):
        return [model_input]
    if isinstance(model_input, list):
        return [row[0] if isinstance(row, list) and len(row) == 1 else row for row in model_input]
    raise ConfigError(f"model input of type {type(model_input).__name__} is not prompts; give a list of strings "
                      "or a DataFrame with a 'prompt' column (or the template's variables)")


class CombinationModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        config = dict(context.model_config or {})
        self.combination = Combination.from_dict(config, where="the logged combination")
        self.ensemble = self.combination.ensemble(where="the logged combination")

    # subtle: no type hints here: MLflow reads predict's hints as a signature and warns on Any
    def predict(self, context, model_input, params=None):
        prompts = [self.combination.prompt_for(item) for item in as_items(model_input)]
        if not prompts:
            return []
        return [result.text for result in self.ensemble.generate_batch(prompts, **dict(params or {}))]
