"""PromptLayer's side of shipping: a release label on the template version, and live requests with scores.

- `publish_release`: `chared promote` (with PROMPTLAYER_API_KEY set) publishes the combination's
  template as a PromptLayer template version carrying the release label (the alias) and the
  combination as metadata, so a team that manages prompts there sees which combination
  serves which label.
- `PromptLayerRecorder`: the LiveRouter logs each routed call as a PromptLayer request with
  the assignment (experiment, arm, registered version) as metadata; feedback is a score.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any, Iterator

from chared_flows.combinations.combination import Combination
from chared_flows.errors import ConfigError, TrackingError
from chared_flows.tracking.promptlayer import _api_key, _sdk


def combination_metadata(combination: Combination, model_uri: str) -> dict[str, str]:
    return {
        "chared_version": str(combination.template.version) if combination.template else "",
        "chared_hash": combination.template.hash if combination.template else "",
        "chared_model_uri": model_uri,
        "chared_content_hash": combination.content_hash,
        "chared_combination": json.dumps({"members": combination.members,
                                          "weights": list(combination.decoding.weights or []),
                                          "mode": combination.decoding.mode}, sort_keys=True),
    }


def publish_release(combination: Combination, label: str, model_uri: str, *, api_key: str | None = None,
                    base_url: str | None = None) -> None:
    """Publish the combination's template version with `label` as its release label."""
    template = combination.template
    if template is None or not template.text:
        raise ConfigError("the combination's template text is unknown (the templates dir lacks "
                          f"{template.ref if template else 'it'}), so it cannot be published to PromptLayer")
    client = _sdk(_api_key(api_key), base_url)
    try:
        client.templates.publish({
            "prompt_name": template.name,
            "prompt_template": {"type": "completion", "template_format": "f-string",
                                "input_variables": list(template.input_variables),
                                "content": [{"type": "text", "text": template.text}]},
            "commit_message": f"{template.ref} serves {model_uri} as {label!r} (chared promote)",
            "metadata": combination_metadata(combination, model_uri),
            "release_labels": [label],
            "tags": ["chared"],
        })
    except Exception as exc:  # noqa: BLE001 - the SDK raises its own classes; one line either way
        raise TrackingError(f"PromptLayer: publishing {template.ref} with label {label!r} failed: "
                            f"{' '.join(str(exc).split())[:200]}") from exc


class PromptLayerRecorder:
    """Logs each routed call as a PromptLayer request with the assignment as metadata."""

    name = "promptlayer"

    def __init__(self, api_key: str | None = None, base_url: str | None = None):
        self.client = _sdk(_api_key(api_key), base_url)

    @contextlib.contextmanager
    def call(self, assignment: Any, inputs: Any) -> Iterator[dict]:
        handle: dict = {}
        started = time.time()
        yield handle
        text = inputs if isinstance(inputs, str) else json.dumps(inputs, default=str)
        answer = self.client.log_request(
            provider="chared", model=assignment.arm,
            input={"type": "completion", "content": [{"type": "text", "text": text}]},
            output={"type": "completion", "content": [{"type": "text", "text": str(handle.get("output", ""))}]},
            request_start_time=started, request_end_time=time.time(), parameters={},
            tags=["chared-live", assignment.experiment],
            metadata={"chared_experiment": assignment.experiment, "chared_arm": assignment.arm,
                      "chared_version": assignment.version, "chared_key": assignment.key_hash},
            function_name="chared_flows.router",
        )
        handle["id"] = (answer or {}).get("id") or (answer or {}).get("request_id")

    def feedback(self, request_id: Any, name: str, value: Any, source: str | None = None) -> None:
        score = float(value)
        if not 0.0 <= score <= 1.0:
            raise ConfigError(f"PromptLayer scores lie in [0, 1]; feedback {name}={value!r} does not")
        self.client.track.score(request_id, round(100 * score), name)
