"""MLflow tracker against a real local SQLite store."""

from __future__ import annotations

import json

import pytest

from chared_flows.tracking.mlflow import (
    MlflowTracker,
    default_tracking_uri,
    load_samples_table,
    publish_template,
)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> str:
    # One SQLite store for the module (creating one costs seconds); each test logs into its
    # own experiment, so the runs of one test never show up in another's.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def tracking_uri(shared_store, monkeypatch) -> str:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return shared_store


@pytest.fixture
def tracker_for(tracking_uri, request):
    """MlflowTracker(...) in this test's own experiment."""
    return lambda **options: MlflowTracker(tracking_uri, experiment=f"test/{request.node.name}", **options)


def test_default_uri_is_sqlite_under_dot_chared(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/.chared/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert default_tracking_uri(tmp_path) == "http://127.0.0.1:1"


def run_through(tracker, run, records, summary=None, artifacts=()):
    tracker.on_run_start(run)
    for record in records:
        tracker.on_record(record)
    tracker.on_run_end(run, summary or {}, list(artifacts))
    return tracker


def test_parent_and_child_runs_with_params_metrics_table(tracker_for, run_record, records, tmp_path):
    report = tmp_path / "report.md"
    report.write_text("# report\n")
    tracker = run_through(tracker_for(), run_record, records,
                          {"ab": {"chared_0.5": {"exact_match": 1 / 3}}}, [report])

    client = tracker.client
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["workflow"] == "math_compare@2"
    assert parent.data.params["template"] == "gsm8k_cot@3"
    assert parent.data.params["template_hash"] == "abc123"
    assert parent.data.params["git_commit"] == "deadbeef"
    assert parent.data.params["package_version"] == "0.1.0"
    assert parent.data.metrics["ab.chared_0.5.exact_match"] == pytest.approx(1 / 3)
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
    assert ens.data.params["tokenizer_families"] == "byte_level,sentencepiece"
    assert ens.data.metrics["latency_s"] == pytest.approx(1.5)  # the mean, under its own name
    assert ens.data.metrics["forward_passes_total"] == 33

    rows = load_samples_table(client, ens.info.run_id)
    assert [r["sample_id"] for r in rows] == ["s0", "s1", "s2"]
    assert rows[2]["output"] == "The answer is 4."
    assert json.loads(rows[0]["inputs"]) == {"question": "What is 0+2?"}
    assert rows[1]["score.exact_match"] == 1.0
    assert len(load_samples_table(client, tracker.parent_run_id)) == 9


def test_the_ui_value_of_a_score_is_its_mean_and_each_sample_has_its_own_key(tracker_for, run_record, records):
    tracker = run_through(tracker_for(), run_record, records)
    single = tracker.client.get_run(tracker.child_run_ids["smollm2"])
    # scores 1, 1, 0: MLflow shows a metric's latest value, which must be the mean
    assert single.data.metrics["exact_match"] == pytest.approx(2 / 3)
    assert single.data.metrics["n_samples"] == 3
    history = tracker.client.get_metric_history(single.info.run_id, "sample/exact_match")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 1.0), (2, 0.0)]
    assert [m.step for m in tracker.client.get_metric_history(single.info.run_id, "exact_match")] == [0]
    latency = tracker.client.get_metric_history(single.info.run_id, "sample/latency_s")
    assert sorted((m.step, m.value) for m in latency) == [(0, 0.5), (1, 1.5), (2, 2.5)]


def test_one_trace_per_generation_linked_to_its_child_run(tracker_for, run_record, records):
    tracker = run_through(tracker_for(), run_record, records)
    run_id = tracker.child_run_ids["chared_0.5"]
    traces = tracker.client.search_traces(locations=[tracker.experiment_id], run_id=run_id)
    assert sorted(t.info.tags["chared.sample_id"] for t in traces) == ["s0", "s1", "s2"]
    trace = next(t for t in traces if t.info.tags["chared.sample_id"] == "s1")
    assert trace.info.trace_metadata["mlflow.sourceRun"] == run_id
    record = next(r for r in records if r.variant == "chared_0.5" and r.sample_id == "s1")
    assert trace.info.request_time == int((record.timestamp - record.latency_s) * 1000)  # the real call window
    assert trace.info.execution_duration == pytest.approx(record.latency_s * 1000, abs=1)
    root = next(s for s in trace.data.spans if s.parent_id is None)
    assert root.attributes["chared.members"] == ["smollm2", "gemma3"]
    assert root.attributes["chared.weights"] == [0.5, 0.5]
    assert (root.attributes["chared.mode"], root.attributes["chared.rule"]) == ("chared", "mixture")
    assert root.attributes["chared.rounds"] == 5
    assert root.attributes["chared.output_tokens"] == {"smollm2": 6, "gemma3": 6}
    assert root.inputs["prompt"] == record.prompt and root.outputs["output"] == record.output
    members = {s.name: s.attributes for s in trace.data.spans if s.parent_id == root.span_id}
    assert members["member gemma3"]["chared.prompt_tokens"] == 9
    assert members["member gemma3"]["chared.weight"] == 0.5
    assert len(tracker.client.search_traces(locations=[tracker.experiment_id])) == 9


def test_the_dataset_is_a_run_input(tracker_for, run_record, records):
    tracker = run_through(tracker_for(), run_record, records)
    for run_id in [tracker.parent_run_id, *tracker.child_run_ids.values()]:
        (given,) = tracker.client.get_run(run_id).inputs.dataset_inputs
        assert given.dataset.name == "gsm8k_jsonl" and given.dataset.digest == "0123456789abcdef"
        assert json.loads(given.dataset.source)["uri"].endswith("data/gsm8k.jsonl")
        tags = {t.key: t.value for t in given.tags}
        assert tags["chared.limit"] == "3" and tags["chared.dataset_hash"] == "sha256:0123456789abcdef0123"


def test_replaying_a_run_completes_the_same_mlflow_runs_without_duplicates(tracker_for, run_record, records):
    """A resume (or `chared sync`) replays every record: same runs, no repeated points or traces."""
    first = tracker_for()
    first.on_run_start(run_record)
    for record in records[:4]:
        first.on_record(record)
    first.on_run_abort(run_record, "KILLED")
    assert first.client.get_run(first.parent_run_id).info.status == "KILLED"
    assert first.client.get_run(first.child_run_ids["gemma"]).info.status == "KILLED"

    again = run_through(tracker_for(), run_record, records, {"n": 9})
    run_through(tracker_for(), run_record, records, {"n": 9})  # and once more
    assert again.parent_run_id == first.parent_run_id and again.child_run_ids == first.child_run_ids
    client = again.client
    assert len(client.search_runs([again.experiment_id])) == 4  # one parent, three children
    assert client.get_run(again.parent_run_id).info.status == "FINISHED"
    smol = again.child_run_ids["smollm2"]
    assert len(client.get_metric_history(smol, "sample/exact_match")) == 3
    assert len(client.get_metric_history(smol, "exact_match")) == 1
    assert len(client.get_metric_history(again.parent_run_id, "n")) == 1
    assert len(client.search_traces(locations=[again.experiment_id])) == 9
    assert len(load_samples_table(client, smol)) == 3  # replaced, not appended


def test_an_errored_row_is_not_shown_as_a_sample_and_its_retry_is(tracker_for, run_record, records):
    import dataclasses

    broken = dataclasses.replace(records[0], error="ModelLoadError: boom", scores={}, output="")
    tracker = tracker_for()
    tracker.on_run_start(run_record)
    tracker.on_record(broken)
    tracker.on_record(records[0])  # the retry of the same pair
    for record in records[1:]:
        tracker.on_record(record)
    tracker.on_run_end(run_record, {}, [])
    smol = tracker.client.get_run(tracker.child_run_ids["smollm2"])
    assert smol.data.metrics["n_samples"] == 3 and smol.data.metrics["n_errors"] == 0


def test_record_for_undeclared_variant_names_it(tracker_for, run_record, records):
    from chared_flows.errors import TrackingError

    tracker = tracker_for()
    tracker.on_run_start(run_record)
    records[0].variant = "nope"
    with pytest.raises(TrackingError, match="'nope'"):
        tracker.on_record(records[0])


def test_publish_template_is_idempotent_per_version(tracking_uri):
    first = publish_template("idem_prompt", 1, "Q: {{question}}\nA:", {"owner": "team"}, tracking_uri=tracking_uri)
    again = publish_template("idem_prompt", 1, "Q: {{question}}\nA:", tracking_uri=tracking_uri)
    second = publish_template("idem_prompt", 2, "Question: {{question}}\nAnswer:", tracking_uri=tracking_uri)
    assert first == again == 1
    assert second == 2
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    loaded = client.get_prompt_version("idem_prompt", 2)
    assert loaded.template == "Question: {{question}}\nAnswer:"
    assert loaded.tags["chared.version"] == "2"
    assert client.get_prompt_version("idem_prompt", 1).tags["owner"] == "team"


def test_templates_are_published_in_mlflow_syntax_linked_and_a_registry_failure_is_not_fatal(
    tracking_uri, tracker_for, run_record, monkeypatch
):
    tracker = tracker_for(prompts=[("gsm8k_cot", 3, "Q: {question}\nA: {{not a variable}}")])
    tracker.on_run_start(run_record)
    assert tracker.published == {"gsm8k_cot@3": 1}
    params = tracker.client.get_run(tracker.parent_run_id).data.params
    assert params["prompt.gsm8k_cot.v3"] == "prompts:/gsm8k_cot/1"
    prompt = tracker.client.load_prompt("prompts:/gsm8k_cot/1")
    assert prompt.template == "Q: {{question}}\nA: {not a variable}"
    assert prompt.variables == {"question"}
    assert prompt.format(question="2+2?") == "Q: 2+2?\nA: {not a variable}"  # what the model saw
    for run_id in [tracker.parent_run_id, *tracker.child_run_ids.values()]:
        linked = json.loads(tracker.client.get_run(run_id).data.tags["mlflow.linkedPrompts"])
        assert linked == [{"name": "gsm8k_cot", "version": "1"}]

    import chared_flows.tracking.mlflow.prompts as module  # where the tracker looks it up

    def broken(*args, **kwargs):
        raise RuntimeError("registry down")

    monkeypatch.setattr(module, "publish_template", broken)
    again = MlflowTracker(tracking_uri, experiment="test/registry-down", prompts=[("gsm8k_cot", 3, "Q: {question}\nA:")])
    again.on_run_start(run_record)  # does not raise: child runs exist, the failure is tagged
    assert set(again.child_run_ids) == {v.name for v in run_record.variants}
    tags = again.client.get_run(again.parent_run_id).data.tags
    assert "registry down" in tags["chared.prompt_error.gsm8k_cot"]


def test_an_unreachable_store_fails_once_in_one_line_and_stops_calling(run_record, records, monkeypatch):
    from chared_flows.errors import TrackingError
    from tests.support.promptlayer_server import closed_port_url

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracker = MlflowTracker(closed_port_url())
    calls = []
    original = tracker.client.get_experiment_by_name
    monkeypatch.setattr(tracker.client, "get_experiment_by_name", lambda *a: calls.append(1) or original(*a))
    with pytest.raises(TrackingError, match=r"^MLflow at http://127\.0\.0\.1:\d+ failed: MlflowException: ") as info:
        tracker.on_run_start(run_record)
    assert "\n" not in str(info.value)
    for record in records:
        tracker.on_record(record)  # offline: kept, not sent
    assert len(calls) == 1 and tracker.offline
    with pytest.raises(TrackingError):
        tracker.on_run_end(run_record, {}, [])  # one more try at the end, then one error
    assert len(calls) == 2
    tracker.on_run_abort(run_record, "KILLED")  # nothing to reach: returns at once


def test_the_ab_verdicts_reach_parent_and_children_under_shared_names(tracker_for, run_record, records):
    """MLflow's compare view lines runs up by metric name: the parent holds `<variant>.<child's name>`."""
    from chared_flows.evaluation.ab import compare, summary_entries
    from chared_flows.flow.runner import summarize

    summary = summarize(records)
    ab = compare(records, run_record.variants).to_dict()
    for variant, entries in summary_entries(ab).items():
        summary[variant].update(entries)
    tracker = run_through(tracker_for(), run_record, records, summary)
    client = tracker.client
    parent = client.get_run(tracker.parent_run_id).data
    ens = client.get_run(tracker.child_run_ids["chared_0.5"]).data
    single = client.get_run(tracker.child_run_ids["smollm2"]).data
    comparison = next(c for c in ab["comparisons"] if c["single"] == "smollm2" and c["metric"] == "exact_match")
    for name in ("diff", "ci_low", "ci_high", "p_holm"):
        key = f"vs.smollm2.exact_match.{name}"
        assert ens.metrics[key] == pytest.approx(comparison[name])
        assert parent.metrics[f"chared_0.5.{key}"] == ens.metrics[key]
    assert ens.tags["verdict.vs.smollm2.exact_match"] == comparison["verdict"] == "no detectable difference"
    assert parent.tags["chared_0.5.verdict.vs.smollm2.exact_match"] == comparison["verdict"]
    for name in ("n_samples", "n_errors", "exact_match", "latency_s"):  # the same names in both
        assert parent.metrics[f"smollm2.{name}"] == pytest.approx(single.metrics[name])


def test_sync_replays_an_ab_runs_comparisons_and_verdicts(run_record, records, tmp_path):
    """`chared sync` gives the trackers what the run's end gave them: the A/B entries too."""
    import json as _json

    from chared_flows.evaluation.ab import compare
    from chared_flows.flow.sync import replay_summary

    ab = compare(records, run_record.variants).to_dict()
    (tmp_path / "ab.json").write_text(_json.dumps(ab))
    summary = replay_summary(records, tmp_path / "ab.json")
    assert summary["chared_0.5"]["verdict.vs.smollm2.exact_match"] == "no detectable difference"
    assert "vs.smollm2.exact_match.p_holm" in summary["chared_0.5"] and summary["smollm2"]["n_samples"] == 3
    assert "verdict.vs.smollm2.exact_match" not in replay_summary(records, tmp_path / "none.json")["chared_0.5"]
