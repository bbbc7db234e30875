"""MLflow tracker against a real local SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chared_flows.tracking.mlflow import (
    MlflowTracker,
    default_tracking_uri,
    load_samples_table,
    publish_template,
)


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return default_tracking_uri(tmp_path)


def test_default_uri_is_sqlite_under_dot_chared(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/.chared/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert default_tracking_uri(tmp_path) == "http://127.0.0.1:1"


def test_parent_and_child_runs_with_params_metrics_table(tracking_uri, run_record, records, tmp_path):
    report = tmp_path / "report.md"
    report.write_text("# report\n")
    tracker = MlflowTracker(tracking_uri)
    tracker.on_run_start(run_record)
    for record in records:
        tracker.on_record(record)
    tracker.on_run_end(run_record, {"ab": {"chared_0.5": {"exact_match": 0.0}}}, [report])

    client = tracker.client
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["workflow"] == "math_compare@2"
    assert parent.data.params["template"] == "gsm8k_cot@3"
    assert parent.data.params["template_hash"] == "abc123"
    assert parent.data.params["git_commit"] == "deadbeef"
    assert parent.data.params["package_version"] == "0.1.0"
    assert parent.data.metrics["ab.chared_0.5.exact_match"] == 0.0
    assert "report.md" in [a.path for a in client.list_artifacts(tracker.parent_run_id)]

    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{tracker.parent_run_id}'"
    )
    assert sorted(c.info.run_name for c in children) == ["chared_0.5", "gemma", "smollm2"]
    ens = client.get_run(tracker.child_run_ids["chared_0.5"])
    assert ens.data.params["members"] == "smollm2,gemma3"
    assert ens.data.params["weights"] == "0.5,0.5"
    assert ens.data.params["mode"] == "chared"
    assert ens.data.params["decoding.max_new_chars"] == "64"
    assert ens.data.params["tokenizer_families"] == "byte_bpe,sentencepiece"
    assert ens.data.metrics["latency_s_mean"] == pytest.approx(1.5)
    assert ens.data.metrics["forward_passes_total"] == 33
    single = client.get_run(tracker.child_run_ids["smollm2"])
    assert single.data.metrics["exact_match"] == 1.0
    history = client.get_metric_history(single.info.run_id, "latency_s")
    assert sorted(m.step for m in history) == [0, 1, 2]

    rows = load_samples_table(client, ens.info.run_id)
    assert [r["sample_id"] for r in rows] == ["s0", "s1", "s2"]
    assert rows[2]["output"] == "The answer is 4."
    assert json.loads(rows[0]["inputs"]) == {"question": "What is 0+2?"}
    assert rows[0]["score.exact_match"] == 0.0
    assert len(load_samples_table(client, tracker.parent_run_id)) == 9


def test_record_for_undeclared_variant_names_it(tracking_uri, run_record, records):
    from chared_flows.errors import TrackingError

    tracker = MlflowTracker(tracking_uri)
    tracker.on_run_start(run_record)
    records[0].variant = "nope"
    with pytest.raises(TrackingError, match="'nope'"):
        tracker.on_record(records[0])


def test_publish_template_is_idempotent_per_version(tracking_uri):
    first = publish_template("gsm8k_cot", 1, "Q: {{question}}\nA:", {"owner": "team"}, tracking_uri=tracking_uri)
    again = publish_template("gsm8k_cot", 1, "Q: {{question}}\nA:", tracking_uri=tracking_uri)
    second = publish_template("gsm8k_cot", 2, "Question: {{question}}\nAnswer:", tracking_uri=tracking_uri)
    assert first == again == 1
    assert second == 2
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    loaded = client.get_prompt_version("gsm8k_cot", 2)
    assert loaded.template == "Question: {{question}}\nAnswer:"
    assert loaded.tags["chared.version"] == "2"
    assert client.get_prompt_version("gsm8k_cot", 1).tags["owner"] == "team"


def test_templates_are_published_at_run_start_and_a_registry_failure_is_not_fatal(tracking_uri, run_record, monkeypatch):
    tracker = MlflowTracker(tracking_uri, prompts=[("gsm8k_cot", 3, "Q: {question}\nA:")])
    tracker.on_run_start(run_record)
    assert tracker.published == {"gsm8k_cot@3": 1}
    params = tracker.client.get_run(tracker.parent_run_id).data.params
    assert params["prompt.gsm8k_cot.v3"] == "prompts:/gsm8k_cot/1"

    import chared_flows.tracking.mlflow as module

    def broken(*args, **kwargs):
        raise RuntimeError("registry down")

    monkeypatch.setattr(module, "publish_template", broken)
    again = MlflowTracker(tracking_uri, prompts=[("gsm8k_cot", 3, "Q: {question}\nA:")])
    again.on_run_start(run_record)  # does not raise: child runs exist, the failure is tagged
    assert set(again.child_run_ids) == {v.name for v in run_record.variants}
    tags = again.client.get_run(again.parent_run_id).data.tags
    assert "registry down" in tags["chared.prompt_error.gsm8k_cot"]


def test_per_record_metrics_stop_after_repeated_failures(tracking_uri, run_record, records, monkeypatch):
    tracker = MlflowTracker(tracking_uri)
    tracker.on_run_start(run_record)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("store down")

    monkeypatch.setattr(tracker.client, "log_batch", failing)
    failures = 0
    for record in records:
        try:
            tracker.on_record(record)
        except RuntimeError:
            failures += 1
    assert failures == len(calls) == MlflowTracker.MAX_RECORD_FAILURES  # then it stops calling
    assert sum(len(v) for v in tracker._records.values()) == len(records)  # kept for on_run_end
