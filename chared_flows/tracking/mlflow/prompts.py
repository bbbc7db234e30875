"""MLflow's prompt registry: templates published in its `{{name}}` syntax and linked to runs.

MLflow reads variables as `{{name}}`, so a template is registered in that syntax; MLflow
numbers versions itself, so our own version and the text's hash go into tags and
publishing the same (name, version, text) twice finds the existing version.
"""

from __future__ import annotations

import hashlib
import logging
import re
import string
from typing import Any

from chared_flows.tracking.mlflow.client import _global_tracking_uri, _short, make_client
from chared_flows.tracking.mlflow.convert import clean_key
from chared_flows.tracking.mlflow.write import log_params

log = logging.getLogger(__name__)


def mlflow_template(text: str) -> str:
    """A template in MLflow's prompt-registry syntax: `{question}` -> `{{question}}`, `{{` -> `{`.

    subtle: our templates use f-string syntax; MLflow reads only `{{name}}` as a variable,
    so a template registered as written could not be formatted from the registry.
    """
    out = []
    for literal, name, _spec, _conversion in string.Formatter().parse(text):
        out.append(literal)
        if name is not None:
            out.append("{{" + name + "}}")
    return "".join(out)


def _registry_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


def publish_template(
    name: str,
    version: int,
    text: str,
    tags: dict[str, str] | None = None,
    *,
    tracking_uri: str | None = None,
) -> int:
    """Register one template version in MLflow's prompt registry; returns MLflow's version.

    MLflow numbers prompt versions itself (1, 2, ...), so our own version and
    the text's hash go into tags, and publishing the same (name, version, text)
    twice returns the existing MLflow version instead of adding a new one.
    """
    client, _ = make_client(tracking_uri)
    text_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    mlflow_name = _registry_name(name)
    for existing in _prompt_versions(client, mlflow_name):
        found = existing.tags or {}
        if found.get("chared.version") == str(version) and found.get("chared.hash") == text_hash:
            return int(existing.version)
    all_tags = {**(tags or {}), "chared.name": name, "chared.version": str(version), "chared.hash": text_hash}
    registered = client.register_prompt(
        mlflow_name, text, commit_message=f"{name}@{version}", tags={k: str(v) for k, v in all_tags.items()}
    )
    return int(registered.version)


def _prompt_versions(client, name: str) -> list[Any]:
    if client.get_prompt(name) is None:
        return []
    return list(client.search_prompt_versions(name, max_results=1000))


def publish_prompts(client: Any, tracking_uri: str, prompts: list[tuple[str, int, str]], run_ids: list[str],
                    parent_run_id: str) -> dict[str, int]:
    """Register each (name, version, text) and link it to the runs; {"name@version": MLflow version}.

    A registry failure does not stop the run: it is logged and tagged on the parent run.
    """
    published: dict[str, int] = {}
    for name, version, text in prompts:
        try:
            mlflow_version = _publish_and_link(client, tracking_uri, name, version, text, run_ids)
        except Exception as exc:  # noqa: BLE001 - the run goes on; the failure is logged and tagged
            log.warning("mlflow: publishing template %s@%s failed: %s", name, version, _short(exc))
            client.set_tag(parent_run_id, f"chared.prompt_error.{clean_key(name)}", str(exc)[:500])
            continue
        published[f"{name}@{version}"] = mlflow_version
        uri = f"prompts:/{_registry_name(name)}/{mlflow_version}"
        for run_id in run_ids:
            log_params(client, client.get_run(run_id), {clean_key(f"prompt.{name}.v{version}"): uri})
    return published


def _publish_and_link(client: Any, tracking_uri: str, name: str, version: int, text: str,
                      run_ids: list[str]) -> int:
    mlflow_version = publish_template(name, version, mlflow_template(text), tracking_uri=tracking_uri)
    prompt = client.get_prompt_version(_registry_name(name), mlflow_version)
    with _global_tracking_uri(tracking_uri):
        for run_id in run_ids:
            client.link_prompt_version_to_run(run_id, prompt)
    return mlflow_version
