"""Combinations in MLflow's Model Registry: promote (log + register + alias) and load back.

A combination is logged as a models-from-code pyfunc model: the small Python file
`mlflow_model_code.py` plus the combination as the model's JSON config (no pickle). Each
registered version carries the content hash and the evidence as tags; promoting the same
content again finds that version instead of adding one. A failure part-way removes what
this call created (the run, the version, a registered model it made), so nothing is left
half-registered.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chared_flows.combinations.combination import Combination, parse_uri
from chared_flows.errors import ConfigError, TrackingError
from chared_flows.tracking.mlflow import _global_tracking_uri, _local_artifact_root, _mlflow, make_client

CODE_FILE = Path(__file__).with_name("mlflow_model_code.py")
EXPERIMENT = "chared-combinations"
HASH_TAG = "chared.content_hash"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class Promotion:
    name: str
    version: int
    created: bool  # False: the same content was already registered as this version
    alias: str | None
    model_uri: str


@dataclass(frozen=True)
class Registered:
    """A combination read back from the registry, with where it came from."""

    combination: Combination
    name: str
    version: int
    uri: str  # what the user asked for, e.g. models:/NAME@champion

    @property
    def where(self) -> str:
        return f"{self.uri} (version {self.version})"


def check_reachable(tracking_uri: str, timeout_s: float = 3.0) -> None:
    """A server that is down is one line now, not minutes of the client's retries."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s):
            return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"the MLflow registry at {tracking_uri} is unreachable ({reason}); start it or set "
                            "MLFLOW_TRACKING_URI to a running server") from None


def _client(tracking_uri: str | None):
    client, uri = make_client(tracking_uri)
    check_reachable(uri)
    return client, uri


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


# --- promote ------------------------------------------------------------------


def evidence_tags(combination: Combination) -> dict[str, str]:
    """Content hash, members, decoding and evidence as registry tags (strings, at most 5000 chars)."""
    ev = combination.evidence
    tags = {
        HASH_TAG: combination.content_hash,
        "chared.members": ",".join(combination.members),
        "chared.fingerprints": ",".join(combination.fingerprints),
        "chared.decoding": json.dumps(combination.decoding.model_dump(mode="json"), sort_keys=True),
        "chared.chat": str(combination.chat).lower(),
    }
    if combination.template is not None:
        tags["chared.template"] = f"{combination.template.ref} {combination.template.hash}"
    for key in ("run_id", "variant", "workflow", "dataset_hash"):
        if ev.get(key):
            tags[f"chared.evidence.{key}"] = str(ev[key])
    metrics = ev.get("metrics") or {}
    for key in ("n", "errors"):
        if key in metrics:
            tags[f"chared.evidence.{key}"] = str(metrics[key])
    for metric, value in (metrics.get("means") or {}).items():
        tags[f"chared.metric.{metric}"] = f"{value:.6g}"
    if ev.get("verdicts"):
        tags["chared.verdicts"] = json.dumps(ev["verdicts"], sort_keys=True, default=str)[:5000]
    return {k: v[:5000] for k, v in tags.items()}


def find_version(client, name: str, content_hash: str) -> int | None:
    """The registered version of `name` whose content hash is `content_hash`, if any."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except Exception as exc:  # noqa: BLE001 - only "no such model" is an answer; the rest is raised
        if _not_found(exc):
            return None
        raise
    for version in versions:
        if (version.tags or {}).get(HASH_TAG) == content_hash:
            return int(version.version)
    return None


def promote(combination: Combination, name: str, alias: str | None = None,
            tracking_uri: str | None = None) -> Promotion:
    """Register `combination` as a version of `name` (or find it), and point `alias` at it."""
    if not _NAME.match(name or ""):
        raise ConfigError(f"registered model name {name!r} may use letters, digits, '_', '.' and '-' only")
    if alias is not None and (not re.fullmatch(r"[A-Za-z0-9_-]+", alias) or alias == "latest"):
        raise ConfigError(f"alias {alias!r} may use letters, digits, '_' and '-' (and is not 'latest')")
    client, uri = _client(tracking_uri)
    existing = find_version(client, name, combination.content_hash)
    if existing is not None:
        if alias:
            client.set_registered_model_alias(name, alias, str(existing))
        return Promotion(name, existing, False, alias, f"models:/{name}/{existing}")
    return _register_new(client, uri, combination, name, alias)


def _register_new(client, uri: str, combination: Combination, name: str, alias: str | None) -> Promotion:
    mlflow = _mlflow()
    created_model = _ensure_registered_model(client, name)
    run_id = version = None
    try:
        with _global_tracking_uri(uri):
            experiment = client.get_experiment_by_name(EXPERIMENT)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(
                EXPERIMENT, artifact_location=_local_artifact_root(uri))
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"promote {name}") as run:
                run_id = run.info.run_id
                mlflow.set_tags({k: v for k, v in evidence_tags(combination).items()})
                info = log_model(combination)
            tags = evidence_tags(combination)
            registered = client.create_model_version(name, info.model_uri, run_id=run_id, tags=tags,
                                                     model_id=getattr(info, "model_id", None))
            version = int(registered.version)
            if alias:
                client.set_registered_model_alias(name, alias, str(version))
    except BaseException as exc:
        _undo(client, name, run_id, version, created_model)
        if isinstance(exc, Exception) and not isinstance(exc, ConfigError):
            raise TrackingError(f"promoting to {name!r} at {uri} failed, nothing was registered: "
                                f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from exc
        raise
    return Promotion(name, version, True, alias, f"models:/{name}/{version}")


def log_model(combination: Combination) -> Any:
    """Log the combination as a models-from-code pyfunc model in the active run."""
    import chared_flows

    mlflow = _mlflow()
    # subtle: without explicit requirements MLflow infers them by loading the model, which
    # here means loading every member's weights; the package is the requirement.
    return mlflow.pyfunc.log_model(
        name="combination",
        python_model=str(CODE_FILE),
        model_config=combination.model_dump(mode="json"),
        pip_requirements=[f"chared-flows=={chared_flows.__version__}"],
    )


def _ensure_registered_model(client, name: str) -> bool:
    """Create the registered model if missing; True when this call created it."""
    try:
        client.get_registered_model(name)
        return False
    except Exception as exc:  # noqa: BLE001
        if not _not_found(exc):
            raise
    client.create_registered_model(name, tags={"chared.kind": "combination"})
    return True


def _undo(client, name: str, run_id: str | None, version: int | None, created_model: bool) -> None:
    """Remove what a failed promotion made; each step is tried even if an earlier one fails."""
    steps = []
    if version is not None:
        steps.append(lambda: client.delete_model_version(name, str(version)))
    if created_model:
        steps.append(lambda: client.delete_registered_model(name))
    if run_id is not None:
        steps.append(lambda: client.delete_run(run_id))
    for step in steps:
        try:
            step()
        except Exception:  # noqa: BLE001 - best effort: the original error is what the user sees
            pass


# --- load back ------------------------------------------------------------------


def resolve_version(client, uri: str) -> tuple[str, int]:
    """(name, version) a models:/ URI points to; unknown model, alias or version: one line."""
    name, alias, version = parse_uri(uri)
    try:
        client.get_registered_model(name)
    except Exception as exc:  # noqa: BLE001
        if _not_found(exc):
            raise ConfigError(f"no registered model {name!r} in the registry; promote one with "
                              f"`chared promote RUN_ID VARIANT --name {name}`") from None
        raise
    try:
        if alias is not None:
            return name, int(client.get_model_version_by_alias(name, alias).version)
        return name, int(client.get_model_version(name, str(version)).version)
    except Exception as exc:  # noqa: BLE001
        if not _not_found(exc) and "not found" not in str(exc).lower():
            raise
        model = client.get_registered_model(name)
        aliases = ", ".join(sorted(getattr(model, "aliases", {}) or {})) or "none"
        numbers = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        versions = ", ".join(map(str, numbers)) or "none"
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        raise ConfigError(f"registered model {name!r} has no {what} (aliases: {aliases}; versions: {versions})") from None


def load_combination(uri: str, tracking_uri: str | None = None) -> Registered:
    """The combination registered at `uri` (models:/NAME@ALIAS or models:/NAME/N), read from its MLmodel."""
    parse_uri(uri)  # a malformed URI is one line before any connection
    mlflow = _mlflow()
    client, store = _client(tracking_uri)
    name, version = resolve_version(client, uri)
    with _global_tracking_uri(store):
        info = mlflow.models.get_model_info(f"models:/{name}/{version}")
    config = (info.flavors.get("python_function") or {}).get("config")  # MLflow's key for model_config
    if not isinstance(config, dict):
        raise ConfigError(f"{uri} (version {version}) is not a chared combination (its MLmodel has no model_config); "
                          "register combinations with `chared promote`")
    return Registered(Combination.from_dict(config, where=f"{uri} (version {version})"), name, version, uri)
