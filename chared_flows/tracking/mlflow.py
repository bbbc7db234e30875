"""MLflow tracking: one parent run per workflow run, one nested child run per variant.

Uses `MlflowClient` with explicit run ids, never `mlflow.start_run()`: the
global active-run stack is per thread and per process, and two runners in one
process (tests, `chared ab` in threads) would otherwise write into each other.

What a run shows, and the traps behind it:
- Per-variant means under the metric's own name (`exact_match`), per-sample values
  under `sample/<name>` at step = the sample's position in the dataset. (MLflow shows
  a metric's value at its latest step: logging samples at steps 0..n-1 and the mean
  under the same key shows the last sample, not the mean.)
- One MLflow parent run per chared run id, found again by its `chared.run_id` tag: a
  resume or `chared sync` completes the same MLflow runs instead of adding new ones,
  and logs only what is missing (per-sample steps, traces, changed means), so a replay
  duplicates nothing. The samples table is replaced, not appended (`log_table` appends).
- One trace per generation (members, weights, mode, rule, rounds, tokens per member),
  linked to the variant's child run.
- Prompt registry: MLflow reads variables as `{{name}}`, so templates are registered in
  that syntax and linked to the runs that used them.
- Outages: the first failed call marks the tracker offline and raises one TrackingError
  (MLflow's client would otherwise retry every later call for seconds each); nothing
  more is attempted until `on_run_end`, which tries once more. The records stay on disk
  and a resume or `chared sync` completes the MLflow side. An interrupted run ends
  KILLED or FAILED (`on_run_abort`), never RUNNING.

Default store: a local SQLite file, `sqlite:///<cwd>/.chared/mlflow.db`
(the prompt registry needs a database store; a plain `./mlruns` folder has
none). `MLFLOW_TRACKING_URI` wins when set.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import string
import tempfile
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from chared_flows.errors import ConfigError, MissingExtraError, TrackingError
from chared_flows.records import TIMINGS, RunRecord, SampleRecord, VariantSpec, variant_summary

log = logging.getLogger(__name__)

# MLflow limits (mlflow/utils/validation.py): param values up to 6000 chars,
# names of params and metrics from this character set.
_PARAM_MAX = 6000
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")
_TABLE_FILE = "samples.json"


def _mlflow():
    # Subtle: telemetry must be off before mlflow is imported; it reads the
    # variable at import time and otherwise tries to reach the internet.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # subtle: against an unreachable server MLflow's REST client retries each call with
    # exponential backoff for minutes (7 retries, 120 s timeout). A tracker must not hold
    # up decoding that long, so unless the user chose otherwise: 2 retries, 10 s.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # Traces are exported when they end, not by a background queue that a short-lived
    # CLI process may exit before draining.
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    # Against a server, ending a run prints "View run ... at: URL" to *stdout*, which would
    # corrupt the JSON summary `chared run` prints there.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        import mlflow
    except ImportError as exc:
        raise MissingExtraError("mlflow", "tracking") from exc
    return mlflow


def default_tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else a SQLite file under `<root>/.chared/`."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    folder = Path(root or Path.cwd()).resolve() / ".chared"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _local_artifact_root(tracking_uri: str) -> str | None:
    """For a local sqlite store, keep artifacts next to the database, not in ./mlruns."""
    if not tracking_uri.startswith("sqlite:///"):
        return None  # a server decides where artifacts go
    db = Path(tracking_uri[len("sqlite:///"):])
    return (db.parent / "mlartifacts").resolve().as_uri()


def make_client(tracking_uri: str | None = None):
    mlflow = _mlflow()
    uri = tracking_uri or default_tracking_uri()
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def clean_key(key: str) -> str:
    return _BAD_KEY_CHARS.sub("_", key)[:250]


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:_PARAM_MAX]


def variant_params(spec: VariantSpec) -> dict[str, str]:
    params = {
        "variant": spec.name,
        "members": ",".join(spec.members),
        "weights": ",".join(f"{w:g}" for w in spec.weights) if spec.weights else "",
        "mode": spec.mode,
        "rule": spec.rule,
        "is_single": str(spec.is_single),
    }
    families = getattr(spec, "tokenizer_families", ())
    if families:
        params["tokenizer_families"] = ",".join(families)
    for i, member in enumerate(spec.members):
        params[f"member.{i}"] = member
    for key, value in sorted(spec.decoding.items()):
        params[f"decoding.{key}"] = value
    return {clean_key(k): _param_value(v) for k, v in params.items()}


def run_params(run: RunRecord) -> dict[str, str]:
    params = {
        "workflow": f"{run.workflow}@{run.workflow_version}",
        "template": f"{run.template}@{run.template_version}",
        "template_hash": run.template_hash,
        "dataset": run.dataset,
        "package_version": run.package_version,
        "git_commit": run.git_commit,
        "variants": ",".join(v.name for v in run.variants),
        "chared_run_id": run.run_id,
        "backend": run.backend,
    }
    return {clean_key(k): _param_value(v) for k, v in params.items()}


TIMING = TIMINGS
SAMPLE_PREFIX = "sample/"


def variant_metrics(records: list[SampleRecord]) -> dict[str, float]:
    """One variant's numbers (records.variant_summary), with MLflow-safe names."""
    return {clean_key(k): v for k, v in variant_summary(records).items()}


def sample_metrics(record: SampleRecord) -> dict[str, float]:
    """One sample's values, under `sample/<name>` (its step is the sample's index)."""
    values = {**record.scores, **{field: float(getattr(record, field)) for field in TIMING}}
    return {clean_key(SAMPLE_PREFIX + k): float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and math.isfinite(v)}


def sample_step(record: SampleRecord) -> int:
    """The sample's position in the dataset; a stable hash of its id for records without one."""
    return record.sample_index if record.sample_index >= 0 else zlib.crc32(record.sample_id.encode()) % 10**9


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


@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's *global* tracking URI at `uri` for a block, then put it back.

    subtle: two MLflow features ignore the client's URI and use the global one: the trace
    exporter (a trace started by `client.start_trace` is exported to the global store)
    and `link_prompt_version_to_run` (it looks the run up in the global store).
    """
    mlflow = _mlflow()
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    if before == uri:
        yield
        return
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def dataset_input(run: RunRecord) -> Any:
    """The run's dataset as an MLflow dataset input: kind, path or generator, limit, content hash."""
    mlflow = _mlflow()
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    try:
        ref = json.loads(run.dataset)
    except (TypeError, ValueError):
        ref = {"kind": str(run.dataset)}
    kind = str(ref.get("kind", "dataset"))
    if ref.get("path"):
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source

        path = str(Path(os.path.expandvars(str(ref["path"]))).expanduser().resolve())
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(path)
    else:  # generated (gsm_symbolic), packaged (humaneval) or inline: say how to rebuild it
        source = CodeDatasetSource({k: json.dumps(v, sort_keys=True, default=str)[:500] for k, v in ref.items()})
    digest = (run.dataset_hash.split(":", 1)[-1] or "unknown")[:16]
    dataset = MetaDataset(source, name=kind, digest=digest)
    tags = {
        "mlflow.data.context": "eval",
        "chared.dataset": json.dumps(ref, sort_keys=True, default=str)[:500],
        "chared.limit": "all" if run.limit is None else str(run.limit),
        "chared.n_samples": str(run.n_samples),
        "chared.dataset_hash": run.dataset_hash,
    }
    return mlflow.entities.DatasetInput(
        dataset._to_mlflow_entity(), tags=[mlflow.entities.InputTag(k, v) for k, v in tags.items()]
    )


def _short(exc: BaseException) -> str:
    """The first line of an exception, trimmed: enough to name the cause in one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


def samples_table(records: list[SampleRecord]) -> dict[str, list[Any]]:
    """Column-wise table for `log_table`: one row per sample, scores as columns."""
    score_names = sorted({name for r in records for name in r.scores})
    table: dict[str, list[Any]] = {
        key: []
        for key in (
            "sample_id", "variant", "inputs", "output", "parsed", "reference",
            "finish_reason", "latency_s", "chars_per_s", "forward_passes", "batch_size", "error",
        )
    }
    for name in score_names:
        table[f"score.{name}"] = []
    for r in records:
        table["sample_id"].append(r.sample_id)
        table["variant"].append(r.variant)
        table["inputs"].append(json.dumps(r.inputs, default=str, ensure_ascii=False))
        table["output"].append(r.output)
        table["parsed"].append(None if r.parsed is None else str(r.parsed))
        table["reference"].append(None if r.reference is None else str(r.reference))
        table["finish_reason"].append(r.finish_reason)
        table["latency_s"].append(r.latency_s)
        table["chars_per_s"].append(r.chars_per_s)
        table["forward_passes"].append(r.forward_passes)
        table["batch_size"].append(r.batch_size)
        table["error"].append(r.error or "")
        for name in score_names:
            table[f"score.{name}"].append(r.scores.get(name))
    return table


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested summary dict -> ("a.b", leaf) pairs."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def flatten_numbers(data: dict[str, Any]) -> dict[str, float]:
    """Nested summary dict -> {"a.b": number} for its finite numbers (metrics)."""
    return {clean_key(name): float(value) for name, value in _flatten(data)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


def flatten_strings(data: dict[str, Any]) -> dict[str, str]:
    """Nested summary dict -> {"a.b": text} for its strings (verdicts become tags)."""
    return {clean_key(name): value for name, value in _flatten(data) if isinstance(value, str)}


class MlflowTracker:
    """Logs a workflow run to MLflow. Not thread-safe per instance; use one per run."""

    name = "mlflow"

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        prompts: list[tuple[str, int, str]] | None = None,
        traces: bool = True,
    ):
        """`prompts`: (name, version, text) of the templates the run uses; each is published to
        MLflow's prompt registry at run start (in MLflow's `{{name}}` syntax), linked to the
        runs, and its registry version logged as a param. `traces`: one trace per generation."""
        self.client, self.tracking_uri = make_client(tracking_uri)
        self.experiment = experiment
        self.prompts = list(prompts or [])
        self.traces = traces
        self.published: dict[str, int] = {}
        self.offline: str | None = None  # why, once a call has failed
        self.parent_run_id: str | None = None
        self.child_run_ids: dict[str, str] = {}
        self.experiment_id: str | None = None
        self._specs: dict[str, VariantSpec] = {}
        self._records: dict[str, dict[str, SampleRecord]] = {}  # variant -> sample id -> latest
        self._logged_steps: dict[str, set[int]] = {}
        self._traced: dict[str, set[str]] = {}

    # -- hooks -------------------------------------------------------------
    def on_run_start(self, run: RunRecord) -> None:
        self._specs = {spec.name: spec for spec in run.variants}
        self._records = {spec.name: {} for spec in run.variants}
        self._guard(self._open, run)

    def on_record(self, record: SampleRecord) -> None:
        if record.variant not in self._specs:
            raise TrackingError(
                f"record for variant {record.variant!r} which the run did not declare; "
                f"declared: {sorted(self._specs)}"
            )
        self._records[record.variant][record.sample_id] = record
        if self.offline is None and self.parent_run_id is not None:
            self._guard(self._log_record, record)

    def on_run_end(
        self, run: RunRecord, summary: dict[str, Any] | None = None, artifacts: list[Path] | None = None
    ) -> None:
        if self.offline is not None:
            self._reconnect(run)  # one more try: the server may be back
        if self.parent_run_id is None:
            raise TrackingError("MlflowTracker.on_run_end before on_run_start; call on_run_start(run) first")
        self._guard(self._finish, summary or {}, list(artifacts or []))

    def on_run_abort(self, run: RunRecord, status: str = "KILLED") -> None:
        """The run stopped before its end: its MLflow runs end `status` (KILLED/FAILED), not RUNNING."""
        if self.offline is not None or self.parent_run_id is None:
            return  # unreachable: `chared sync` or a resume will close them
        self._guard(self._terminate, status)

    # -- opening: find or create the runs ------------------------------------
    def _guard(self, step, *args: Any) -> Any:
        """Run one step; the first failure marks the tracker offline and raises one clear error."""
        try:
            return step(*args)
        except TrackingError:
            raise
        except Exception as exc:  # noqa: BLE001 - turned into one TrackingError; the cause is chained
            self.offline = _short(exc)
            log.debug("mlflow: %s failed", getattr(step, "__name__", step), exc_info=True)
            raise TrackingError(f"MLflow at {self.tracking_uri} failed: {self.offline}") from exc

    def _reconnect(self, run: RunRecord) -> None:
        self.offline = None
        self.parent_run_id, self.child_run_ids = None, {}
        self._guard(self._open, run)
        for by_sample in self._records.values():
            for record in by_sample.values():
                self._guard(self._log_record, record)

    def _open(self, run: RunRecord) -> None:
        self.experiment_id = self._experiment_id(self.experiment or f"chared/{run.workflow}")
        tags = {"chared.run_id": run.run_id, "chared.workflow": run.workflow}
        parent = self._find_parent(run.run_id)
        if parent is None:
            parent = self.client.create_run(
                self.experiment_id, run_name=f"{run.workflow}@{run.workflow_version}", tags=tags
            )
        self.parent_run_id = parent.info.run_id
        self._set_running(parent)
        self._log_params(parent, run_params(run))
        children = self._find_children(self.parent_run_id)
        for spec in run.variants:
            child = children.get(spec.name)
            if child is None:
                child = self.client.create_run(
                    self.experiment_id,
                    run_name=spec.name,
                    tags={**tags, "mlflow.parentRunId": self.parent_run_id, "chared.variant": spec.name},
                )
            self.child_run_ids[spec.name] = child.info.run_id
            self._set_running(child)
            self._log_params(child, {**run_params(run), **variant_params(spec)})
            self._logged_steps[spec.name] = self._steps_logged(child.info.run_id)
            self._traced[spec.name] = self._samples_traced(child.info.run_id) if self.traces else set()
        every = [self.parent_run_id, *self.child_run_ids.values()]
        if run.dataset_hash:
            for run_id in every:
                self.client.log_inputs(run_id, datasets=[dataset_input(run)])
        self._publish_prompts(every)

    def _find_parent(self, chared_run_id: str) -> Any:
        """The MLflow parent run of this chared run id, if an earlier attempt made one (the oldest)."""
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`chared.run_id` = '{chared_run_id}'",
            order_by=["attributes.start_time ASC"], max_results=1000,
        )
        parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
        return parents[0] if parents else None

    def _find_children(self, parent_run_id: str) -> dict[str, Any]:
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=1000,
        )
        children: dict[str, Any] = {}
        for r in sorted(found, key=lambda r: r.info.start_time):
            children.setdefault(r.data.tags.get("chared.variant", r.info.run_name), r)
        return children

    def _set_running(self, found: Any) -> None:
        if found.info.status != "RUNNING":
            self.client.update_run(found.info.run_id, status="RUNNING")

    def _steps_logged(self, run_id: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(run_id, SAMPLE_PREFIX + "latency_s")}

    def _samples_traced(self, run_id: str) -> set[str]:
        seen: set[str] = set()
        token = None
        while True:
            page = self.client.search_traces(
                locations=[self.experiment_id], run_id=run_id, include_spans=False, max_results=500, page_token=token
            )
            seen.update(t.info.tags.get("chared.sample_id", "") for t in page)
            token = page.token
            if not token:
                return seen - {""}

    def _publish_prompts(self, run_ids: list[str]) -> None:
        """Register each template (MLflow syntax) and link it to the runs; a registry failure is tagged."""
        for name, version, text in self.prompts:
            try:
                mlflow_version = publish_template(name, version, mlflow_template(text), tracking_uri=self.tracking_uri)
                prompt = self.client.get_prompt_version(_registry_name(name), mlflow_version)
                with _global_tracking_uri(self.tracking_uri):
                    for run_id in run_ids:
                        self.client.link_prompt_version_to_run(run_id, prompt)
            except Exception as exc:  # noqa: BLE001 - the run goes on; the failure is logged and tagged
                log.warning("mlflow: publishing template %s@%s failed: %s", name, version, _short(exc))
                self.client.set_tag(self.parent_run_id, f"chared.prompt_error.{clean_key(name)}", str(exc)[:500])
                continue
            self.published[f"{name}@{version}"] = mlflow_version
            uri = f"prompts:/{_registry_name(name)}/{mlflow_version}"
            for run_id in run_ids:
                self._log_params(self.client.get_run(run_id), {clean_key(f"prompt.{name}.v{version}"): uri})

    # -- per record ----------------------------------------------------------
    def _log_record(self, record: SampleRecord) -> None:
        """This sample's points and trace, unless this MLflow run has them already (a replay)."""
        if record.error:
            return  # no numbers to show; a retry replaces the record
        run_id, step = self.child_run_ids[record.variant], sample_step(record)
        if step not in self._logged_steps[record.variant]:
            self._log_metrics(run_id, sample_metrics(record), step=step)
            self._logged_steps[record.variant].add(step)
        if self.traces and record.sample_id not in self._traced[record.variant]:
            self._log_trace(run_id, record, self._specs[record.variant])
            self._traced[record.variant].add(record.sample_id)

    def _log_trace(self, run_id: str, record: SampleRecord, spec: VariantSpec) -> None:
        """One trace per generation: the call window, the prompt and output, a span per member."""
        gen = record.generation or {}
        start_ns = int((record.timestamp - record.latency_s) * 1e9)
        end_ns = max(int(record.timestamp * 1e9), start_ns)
        names = list(gen.get("output_tokens") or gen.get("forward_passes") or spec.members)
        weights = list(spec.weights) if spec.weights else [1.0 / len(spec.members)] * len(spec.members)
        attributes = {
            "chared.members": list(spec.members), "chared.weights": weights, "chared.mode": spec.mode,
            "chared.rule": spec.rule, "chared.rounds": gen.get("rounds"), "chared.finish_reason": record.finish_reason,
            "chared.forward_passes": gen.get("forward_passes", {}), "chared.prompt_tokens": gen.get("prompt_tokens", {}),
            "chared.output_tokens": gen.get("output_tokens", {}), "chared.chars_per_s": record.chars_per_s,
        }
        tags = {"chared.run_id": record.run_id, "chared.variant": record.variant, "chared.sample_id": record.sample_id}
        with _global_tracking_uri(self.tracking_uri):
            root = self.client.start_trace(
                "chared.generate", span_type="LLM", inputs={"prompt": record.prompt, "inputs": record.inputs},
                attributes=attributes, tags=tags, experiment_id=self.experiment_id, start_time_ns=start_ns,
                run_id=run_id,
            )
            for i, member in enumerate(names):
                span = self.client.start_span(
                    f"member {member}", trace_id=root.trace_id, parent_id=root.span_id, span_type="LLM",
                    start_time_ns=start_ns, attributes={
                        "chared.weight": weights[i] if i < len(weights) else None,
                        **{f"chared.{k}": (gen.get(k) or {}).get(member)
                           for k in ("prompt_tokens", "output_tokens", "forward_passes", "tokens_fed")},
                    },
                )
                self.client.end_span(root.trace_id, span.span_id, end_time_ns=end_ns)
            self.client.end_trace(
                root.trace_id, outputs={"output": record.output, "parsed": None if record.parsed is None else str(record.parsed)},
                end_time_ns=end_ns,
            )

    # -- closing -------------------------------------------------------------
    def _finish(self, summary: dict[str, Any], artifacts: list[Path]) -> None:
        for variant, run_id in self.child_run_ids.items():
            records = list(self._records.get(variant, {}).values())
            extra = summary.get(variant, {}) if isinstance(summary.get(variant), dict) else {}
            self._log_changed(run_id, {**variant_metrics(records), **flatten_numbers(extra)})
            self._set_tags(run_id, flatten_strings(extra))
            if records:
                self._replace_table(run_id, samples_table(records))
            self.client.set_terminated(run_id, "FINISHED")
        every = [r for by_sample in self._records.values() for r in by_sample.values()]
        if every:
            self._replace_table(self.parent_run_id, samples_table(every))
        self._log_changed(self.parent_run_id, flatten_numbers(summary))
        self._set_tags(self.parent_run_id, flatten_strings(summary))
        for path in artifacts:
            self._log_artifact(Path(path))
        self.client.set_terminated(self.parent_run_id, "FINISHED")

    def _terminate(self, status: str) -> None:
        for run_id in [*self.child_run_ids.values(), self.parent_run_id]:
            self.client.set_terminated(run_id, status)

    # -- helpers -----------------------------------------------------------
    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = _local_artifact_root(self.tracking_uri)
        return self.client.create_experiment(name, artifact_location=location)

    def _log_params(self, found: Any, params: dict[str, str]) -> None:
        """Params the run does not have yet (MLflow refuses to change a logged param)."""
        mlflow = _mlflow()
        have = found.data.params if hasattr(found, "data") else {}
        items = [mlflow.entities.Param(k, v) for k, v in params.items() if k not in have]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(found.info.run_id, params=items[start:start + 100], synchronous=True)

    def _log_metrics(self, run_id: str, values: dict[str, float], step: int = 0) -> None:
        mlflow = _mlflow()
        now = int(time.time() * 1000)
        items = [
            mlflow.entities.Metric(clean_key(k), float(v), now, step)
            for k, v in values.items()
            if isinstance(v, (int, float)) and math.isfinite(v)
        ]
        for start in range(0, len(items), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(run_id, metrics=items[start:start + 1000], synchronous=True)

    def _log_changed(self, run_id: str, values: dict[str, float]) -> None:
        """Log only the values that differ from what the run shows now (a replay adds no points)."""
        current = self.client.get_run(run_id).data.metrics
        self._log_metrics(run_id, {k: v for k, v in values.items() if current.get(clean_key(k)) != float(v)})

    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Tags (an A/B's verdicts) that differ from what the run shows now."""
        current = self.client.get_run(run_id).data.tags if tags else {}
        for key, value in tags.items():
            if current.get(key) != value:
                self.client.set_tag(run_id, key, value[:5000])

    def _replace_table(self, run_id: str, table: dict[str, list[Any]]) -> None:
        """Write the samples table as a whole (MlflowClient.log_table would append to an existing one)."""
        columns = list(table)
        rows = [list(row) for row in zip(*table.values())]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / _TABLE_FILE
            path.write_text(json.dumps({"columns": columns, "data": rows}, default=str, ensure_ascii=False),
                            encoding="utf-8")
            self.client.log_artifact(run_id, str(path))
        tags = self.client.get_run(run_id).data.tags
        listed = json.loads(tags.get("mlflow.loggedArtifacts", "[]"))
        entry = {"path": _TABLE_FILE, "type": "table"}  # what makes the UI show it as a table
        if entry not in listed:
            self.client.set_tag(run_id, "mlflow.loggedArtifacts", json.dumps(listed + [entry]))

    def _log_artifact(self, path: Path) -> None:
        if not path.exists():
            raise ConfigError(f"artifact {path} does not exist; write the report before on_run_end")
        if path.is_dir():
            self.client.log_artifacts(self.parent_run_id, str(path), artifact_path=path.name)
        else:
            self.client.log_artifact(self.parent_run_id, str(path))


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
    import hashlib

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


def load_samples_table(client, run_id: str) -> list[dict[str, Any]]:
    """Read back the per-sample table of one run as a list of row dicts.

    Subtle: `MlflowClient.load_table` finds runs through `mlflow.search_runs`,
    which uses the *global* tracking URI and not the client's, so it misses
    runs in any other store. This reads the artifact through the client.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, _TABLE_FILE, tmp)
        data = json.loads(Path(local).read_text(encoding="utf-8"))
    return [dict(zip(data["columns"], row)) for row in data["data"]]
