"""MLflow tracking: one parent run per workflow run, one nested child run per variant.

Uses `MlflowClient` with explicit run ids, never `mlflow.start_run()`: the
global active-run stack is per thread and per process, and two runners in one
process (tests, `chared ab` in threads) would otherwise write into each other.

One job per module:
    tracker.py   MlflowTracker: the Tracker hooks, the records it keeps, outages
    runs.py      the runs' life: experiment, parent and children found or created, finished, terminated
    resume.py    what an earlier attempt left: its parent, children, logged steps, traced samples
    prompts.py   the prompt registry: templates in MLflow's `{{name}}` syntax, linked to the runs
    traces.py    one trace per generation, a span per member
    tables.py    the samples table (written whole, read back) and report artifacts
    datasets.py  the run's dataset as an MLflow dataset input
    write.py     params, metrics and tags onto a run, only what it lacks
    convert.py   records into MLflow-safe params, metrics and tags (no MLflow call)
    client.py    importing the SDK, the default store, a client, the global URI

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

Everything this module offered before it became a package is still importable from here.
"""

from chared_flows.tracking.mlflow.client import _global_tracking_uri as _global_tracking_uri
from chared_flows.tracking.mlflow.client import _local_artifact_root as _local_artifact_root
from chared_flows.tracking.mlflow.client import _mlflow as _mlflow
from chared_flows.tracking.mlflow.client import default_tracking_uri, make_client
from chared_flows.tracking.mlflow.convert import (
    SAMPLE_PREFIX,
    TIMING,
    clean_key,
    flatten_numbers,
    flatten_strings,
    run_params,
    sample_metrics,
    sample_step,
    variant_metrics,
    variant_params,
)
from chared_flows.tracking.mlflow.datasets import dataset_input
from chared_flows.tracking.mlflow.prompts import mlflow_template, publish_template
from chared_flows.tracking.mlflow.tables import load_samples_table, samples_table
from chared_flows.tracking.mlflow.tracker import MlflowTracker

__all__ = [
    "SAMPLE_PREFIX", "TIMING", "MlflowTracker", "clean_key", "dataset_input", "default_tracking_uri",
    "flatten_numbers", "flatten_strings", "load_samples_table", "make_client", "mlflow_template",
    "publish_template", "run_params", "sample_metrics", "sample_step", "samples_table", "variant_metrics",
    "variant_params",
]
