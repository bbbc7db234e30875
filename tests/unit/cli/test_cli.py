"""The `chared` CLI: subcommands end to end on scripted members; user errors are one line, exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import chared_flows.integrations.langchain as lc
from chared_flows import cli
from chared_flows.decoding import Member
from chared_flows.errors import DecodingError
from chared_flows.evaluation import base as evaluation
from tests.fixtures.tiny import scripted_member
from tests.support.scripted_cli import accept_scripted_specs

REPO = Path(__file__).resolve().parents[3]
SCRIPTS = {"five": "The answer is 5.\nQuestion: more", "two": "The answer is 2.\nQuestion: more"}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped templates plus a small inline workflow, as the working directory."""
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "tiny.yaml").write_text(
        "name: tiny\nversion: 1\ntemplate: math_answer@1\n"
        "dataset: {kind: inline, samples: [{id: a, inputs: {question: q1}, reference: 5}, "
        "{id: b, inputs: {question: q2}, reference: 2}]}\n"
        "parser: number\nscorers: [exact]\ndecoding: {max_new_chars: 40, stop: [\"\\n\"]}\n"
        "variants:\n  - {name: five, models: [five]}\n  - {name: mix, models: [five, two], weights_sweep: [0.5]}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHARED_TEMPLATES_DIR", raising=False)
    monkeypatch.delenv("CHARED_WORKFLOWS_DIR", raising=False)

    class Exact:
        name = "exact"

        def score(self, sample, output, parsed):
            return {"exact": float(parsed == sample.reference)}

    monkeypatch.setitem(evaluation._SCORERS, "exact", lambda **_: Exact())
    load = lambda spec, chat=False, **_: scripted_member(SCRIPTS[spec], name=spec)  # noqa: E731
    monkeypatch.setattr(lc, "_load_member", load)
    monkeypatch.setattr(Member, "load", staticmethod(load))
    accept_scripted_specs(SCRIPTS, monkeypatch)
    return tmp_path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_streams_the_ensemble_output(project, capsys) -> None:
    code, out, err = run_cli(capsys, "generate", "Q: 2+3=?", "--models", "five,two", "--weights", "0.9,0.1",
                             "--stop", r"\n", "--max-new-chars", "100")
    assert code == 0, err
    assert out == "The answer is 5.\n"


def test_generate_rejects_mismatched_weights_in_one_line(project, capsys) -> None:
    code, out, err = run_cli(capsys, "generate", "x", "--models", "five,two", "--weights", "1")
    assert code == 2 and out == ""
    assert err.startswith("error: --weights has 1 values for 2 models") and err.count("\n") == 1
    code, _, err = run_cli(capsys, "generate", "x", "--models", "five", "--weights", "abc")
    assert code == 2 and "must be comma-separated numbers" in err and "Traceback" not in err


def test_templates_list_show_and_lock(project, capsys) -> None:
    code, out, _ = run_cli(capsys, "templates", "list")
    assert code == 0 and "math_answer  (v1)" in out and "char_scoring" in out
    code, out, _ = run_cli(capsys, "templates", "show", "math_answer@latest")
    assert code == 0 and "# math_answer@1  sha256:" in out and "(locked)" in out and "Question: {question}" in out
    code, _, err = run_cli(capsys, "templates", "show", "math_answer@9")
    assert code == 2 and "error: template 'math_answer' has no version 9" in err
    code, out, _ = run_cli(capsys, "templates", "lock")
    assert code == 0 and out.strip() == "nothing to lock"


def test_changed_locked_template_is_a_one_line_error(project, capsys) -> None:
    path = project / "templates" / "math_answer" / "v1.yaml"
    path.write_text(path.read_text().replace("Solve the problem.", "Solve it."))
    code, _, err = run_cli(capsys, "templates", "show", "math_answer@1")
    assert code == 2 and "changed after math_answer@1 was locked" in err and err.count("\n") == 1


def test_workflows_list_and_validate(project, capsys) -> None:
    code, out, _ = run_cli(capsys, "workflows", "list")
    assert code == 0 and "tiny  v1  math_answer@1  2 variants" in out
    code, out, err = run_cli(capsys, "workflows", "validate", "tiny")
    assert code == 0, err
    assert "ok: tiny v1" in out and "variant  mix-w0.5: five+two weights 0.5/0.5" in out


def test_validate_reports_a_broken_workflow_with_file_and_line(project, capsys) -> None:
    path = project / "workflows" / "tiny.yaml"
    path.write_text(path.read_text().replace("scorers: [exact]", "scorers: [nosuch]"))
    code, _, err = run_cli(capsys, "workflows", "validate", "tiny")
    assert code == 2 and err.startswith("error: workflows/tiny.yaml:6: unknown scorer 'nosuch'")


def test_dirs_come_from_flags_or_environment(project, capsys, monkeypatch, tmp_path) -> None:
    moved = tmp_path / "elsewhere"
    shutil.move(str(project / "workflows"), moved)
    code, _, err = run_cli(capsys, "workflows", "validate", "tiny")
    assert code == 2 and "unknown workflow 'tiny'" in err
    code, out, _ = run_cli(capsys, "--workflows-dir", str(moved), "workflows", "list")
    assert code == 0 and "tiny" in out
    monkeypatch.setenv("CHARED_WORKFLOWS_DIR", str(moved))
    code, out, _ = run_cli(capsys, "workflows", "validate", "tiny")
    assert code == 0 and "ok: tiny" in out


def test_run_writes_records_and_resumes(project, capsys) -> None:
    code, out, err = run_cli(capsys, "run", "tiny", "--run-id", "r1", "--out", "runs", "--no-track")
    assert code == 0, err
    assert "trackers: none" in err
    summary = json.loads(out)
    assert summary["five"]["exact"] == 0.5 and summary["mix-w0.5"]["n_samples"] == 2
    lines = (project / "runs" / "r1" / "records.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["output"] == "The answer is 5."
    code, _, err = run_cli(capsys, "run", "tiny", "--run-id", "r1", "--out", "runs", "--no-track")
    assert code == 0 and "0 new records" in err
    code, _, err = run_cli(capsys, "run", "tiny", "--limit", "0")
    assert code == 2 and "--limit 0 must be at least 1" in err


def test_unknown_subcommand_is_an_argparse_error(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2


# --- ab ---------------------------------------------------------------------------


def test_ab_runs_every_variant_and_writes_the_report(project, capsys) -> None:
    code, out, err = run_cli(capsys, "ab", "tiny", "--run-id", "ab1", "--out", "runs", "--no-track")
    assert code == 0, err
    report = project / "runs" / "ab1" / "report"
    assert out.splitlines()[0] == f"report: {report / 'report.md'}"
    # the verdict table ends the output: every variant's mean, the ensemble's difference and verdict
    table = out.split("\n\n", 1)[1].splitlines()
    assert table[0].split() == ["variant", "metric", "mean", "[95%", "CI]", "difference", "vs", "best", "single",
                                "[95%", "CI]", "verdict"]
    ensemble_row = next(line for line in table if line.startswith("mix-w0.5") and " exact " in line)
    assert "vs five" in ensemble_row and "(p_holm " in ensemble_row
    md = (report / "report.md").read_text()
    assert "| mix-w0.5 | five | 2 |" in md  # ensemble vs single, paired on 2 samples
    assert (report / "report.html").is_file() and list(report.glob("*.png"))
    ab = json.loads((report / "ab.json").read_text())
    assert {(v["variant"], v["mean"]) for v in ab["variants"] if v["metric"] == "exact"} == {("five", 0.5), ("mix-w0.5", 0.5)}
    records = [json.loads(line) for line in (project / "runs" / "ab1" / "records.jsonl").read_text().splitlines()]
    # interleaved a batch of samples at a time (here both): a batch holds one variant's pairs
    # the timed sub-sample (default 4: here both samples) decodes alone, one variant after another
    assert [(r["variant"], r["sample_id"]) for r in records] == [("five", "a"), ("mix-w0.5", "a"),
                                                                 ("five", "b"), ("mix-w0.5", "b")]
    assert {r["batch_size"] for r in records} == {1}
    # resuming a finished run does no decoding and rewrites the report
    (report / "report.md").unlink()
    code, out, err = run_cli(capsys, "ab", "tiny", "--run-id", "ab1", "--out", "runs", "--no-track")
    assert code == 0 and "0 new records" in err and (report / "report.md").is_file()
    # without a timed sub-sample, a batch of samples at a time, each batch one variant's
    code, out, err = run_cli(capsys, "ab", "tiny", "--run-id", "ab3", "--out", "runs", "--no-track",
                             "--timed-samples", "0")
    records = [json.loads(line) for line in (project / "runs" / "ab3" / "records.jsonl").read_text().splitlines()]
    assert [(r["variant"], r["sample_id"]) for r in records] == [("five", "a"), ("five", "b"),
                                                                 ("mix-w0.5", "a"), ("mix-w0.5", "b")]
    assert {r["batch_size"] for r in records} == {2}


def test_ab_user_errors_are_one_line_exit_2(project, capsys) -> None:
    for argv, message in [
        (["ab", "nosuch"], "unknown workflow 'nosuch'"),
        (["ab", "tiny", "--limit", "0"], "--limit 0 must be at least 1"),
        (["ab", "tiny", "--dataset-path", "missing.jsonl"], "--dataset-path 'missing.jsonl' is not a file"),
        (["ab", "tiny", "--no-track", "--tracker", "mlflow"], "contradict"),
        (["ab", "tiny", "--effect", "exact=abc"], "--effect 'exact=abc' must be METRIC=VALUE"),
        (["ab", "tiny", "--effect", "exact=-1"], "--effect 'exact=-1' must be METRIC=VALUE"),
        (["ab", "tiny", "--timed-samples", "-1"], "--timed-samples -1 must be at least 0"),
    ]:
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and err.startswith("error: ") and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_ab_logs_the_run_and_its_report_to_mlflow(project, capsys, monkeypatch) -> None:
    from chared_flows.tracking.mlflow import make_client

    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, _, err = run_cli(capsys, "ab", "tiny", "--run-id", "ab2", "--out", "runs")
    assert code == 0, err
    assert "trackers: mlflow" in err and "warning: tracker" not in err
    client, _ = make_client(uri)
    experiment = client.get_experiment_by_name("chared/tiny")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.data.tags["chared.variant"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert set(children) == {"five", "mix-w0.5"}
    assert children["mix-w0.5"].data.params["tokenizer_families"] == "byte_level,byte_level"
    assert parent.data.params["prompt.math_answer.v1"].startswith("prompts:/math_answer/")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.md", "report.html", "ab.json", "records.jsonl"} <= logged
    assert client.get_prompt("math_answer") is not None


# --- sync -------------------------------------------------------------------------


def test_sync_sends_what_a_run_left_in_the_outbox(project, capsys, monkeypatch) -> None:
    from tests.support.promptlayer_server import FakePromptLayer, closed_port_url

    monkeypatch.setenv("PROMPTLAYER_API_KEY", "pl-test-key")
    monkeypatch.setenv("PROMPTLAYER_BASE_URL", closed_port_url())
    code, out, err = run_cli(capsys, "run", "tiny", "--run-id", "p1", "--tracker", "promptlayer")
    # PromptLayer down: every record is on disk, and the run says in one line that PromptLayer misses them
    assert code == 3 and json.loads(out)["five"]["n_samples"] == 2, err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: tracker promptlayer: 7 PromptLayer item(s) of run p1 were not delivered")
    assert line.endswith("complete promptlayer later with `chared sync`") and "Traceback" not in err
    assert "warning" not in err.lower() and "not sent" not in err  # the tracker's own chatter stays quiet
    code, out, err = run_cli(capsys, "sync", "--timeout", "2")
    # 4 generations, the template and one group per sample wait in the outbox
    assert code == 3 and "pending 7" in out and "still pending" in err
    with FakePromptLayer(api_key="pl-test-key") as server:
        monkeypatch.setenv("PROMPTLAYER_BASE_URL", server.url)
        code, out, err = run_cli(capsys, "sync")
        assert code == 0, err
        # the template, the 2 groups, 4 logs, then their 4 scores and 4 group links
        assert out.startswith("sent 15,") and "pending 0" in out
        code, out, _ = run_cli(capsys, "sync")
        assert code == 0 and out == "nothing to sync\n"
        assert not (project / "runs" / "p1" / "sync-pending.json").exists()
        keys = sorted(body["metadata"]["chared_idempotency_key"] for body in server.accepted_logs())
    assert keys == sorted(f"p1:{v}:{s}" for v in ("five", "mix-w0.5") for s in ("a", "b"))


def test_a_run_with_promptlayer_first_sends_what_earlier_runs_left(project, capsys, monkeypatch) -> None:
    from tests.support.promptlayer_server import FakePromptLayer, closed_port_url

    monkeypatch.setenv("PROMPTLAYER_API_KEY", "pl-test-key")
    monkeypatch.setenv("PROMPTLAYER_BASE_URL", closed_port_url())
    assert run_cli(capsys, "run", "tiny", "--run-id", "p1", "--tracker", "promptlayer", "--limit", "1")[0] == 3
    with FakePromptLayer(api_key="pl-test-key") as server:
        monkeypatch.setenv("PROMPTLAYER_BASE_URL", server.url)
        code, _, err = run_cli(capsys, "run", "tiny", "--run-id", "p2", "--tracker", "promptlayer", "--limit", "1")
        assert code == 0, err
        runs = sorted(body["metadata"]["run_id"] for body in server.accepted_logs())
    assert runs == ["p1", "p1", "p2", "p2"]


def test_sync_with_nothing_pending_needs_no_api_key(project, capsys, monkeypatch) -> None:
    monkeypatch.delenv("PROMPTLAYER_API_KEY", raising=False)
    code, out, err = run_cli(capsys, "sync")
    assert (code, out, err) == (0, "nothing to sync\n", "")
    assert not (project / ".chared").exists()  # no outbox made for a user who never used PromptLayer


def test_sync_of_promptlayer_items_without_an_api_key_is_one_line(project, capsys, monkeypatch) -> None:
    from tests.support.promptlayer_server import closed_port_url

    monkeypatch.setenv("PROMPTLAYER_API_KEY", "pl-test-key")
    monkeypatch.setenv("PROMPTLAYER_BASE_URL", closed_port_url())
    assert run_cli(capsys, "run", "tiny", "--run-id", "p1", "--tracker", "promptlayer", "--limit", "1")[0] == 3
    monkeypatch.delenv("PROMPTLAYER_API_KEY")
    code, out, err = run_cli(capsys, "sync")
    assert code == 2 and out == ""
    assert err == ("error: 4 PromptLayer item(s) wait in the outbox but PROMPTLAYER_API_KEY is not set; "
                   "export it and run `chared sync` again\n")


def test_a_retried_pair_names_its_first_promptlayer_request(project, capsys, monkeypatch) -> None:
    """A pair that errored, then succeeded on resume: the second request's metadata names the first."""
    from tests.fixtures import tiny
    from tests.support.promptlayer_server import FakePromptLayer

    original, failing = tiny.ScriptedRunner.next_logits, {"on": True}

    def next_logits(self, ids):
        if failing["on"] and self.script.startswith(SCRIPTS["two"].encode()[:15]):  # member "two"
            raise DecodingError("scripted failure")
        return original(self, ids)

    monkeypatch.setattr(tiny.ScriptedRunner, "next_logits", next_logits)
    monkeypatch.setenv("PROMPTLAYER_API_KEY", "pl-test-key")
    with FakePromptLayer(api_key="pl-test-key") as server:
        monkeypatch.setenv("PROMPTLAYER_BASE_URL", server.url)
        args = ("run", "tiny", "--run-id", "p1", "--tracker", "promptlayer", "--limit", "1")
        code, _, err = run_cli(capsys, *args)
        assert code == 4 and "mix-w0.5 a: DecodingError: scripted failure" in err, err  # every pair of it failed
        failing["on"] = False
        code, _, err = run_cli(capsys, *args)  # the resume retries the error row
        assert code == 0 and "1 new records" in err, err
        logs = {i: body for i, body in server.requests.items() if body["model"] == "mix-w0.5"}
    (first_id, first), (_, second) = sorted(logs.items())
    assert (first["status"], second["status"]) == ("ERROR", "SUCCESS")
    assert second["metadata"]["chared_idempotency_key"] == first["metadata"]["chared_idempotency_key"] == "p1:mix-w0.5:a"
    assert second["metadata"]["chared_version"] == "2"
    assert second["metadata"]["chared_supersedes"] == str(first_id)


def test_run_with_promptlayer_links_the_template_the_prompt_and_the_call_window(project, capsys, monkeypatch) -> None:
    import time as clock

    from tests.fixtures import tiny
    from tests.support.promptlayer_server import FakePromptLayer

    original = tiny.ScriptedRunner.next_logits

    def slow(self, ids):
        clock.sleep(0.01)  # each call lasts long enough for a shifted window to show
        return original(self, ids)

    monkeypatch.setattr(tiny.ScriptedRunner, "next_logits", slow)
    monkeypatch.setenv("PROMPTLAYER_API_KEY", "pl-test-key")
    with FakePromptLayer(api_key="pl-test-key") as server:
        monkeypatch.setenv("PROMPTLAYER_BASE_URL", server.url)
        before = clock.time()
        code, _, err = run_cli(capsys, "run", "tiny", "--run-id", "p1", "--tracker", "promptlayer")
        after = clock.time()
        assert code == 0, err
        (published,) = server.templates["math_answer"]
        logs = server.accepted_logs()
    template = (project / "templates" / "math_answer" / "v1.yaml").read_text()
    assert published["prompt_template"]["content"][0]["text"] in template.replace("\n  ", "\n")
    assert published["prompt_template"]["input_variables"] == ["question"]
    records = {(r["variant"], r["sample_id"]): r for r in map(json.loads, (project / "runs" / "p1" / "records.jsonl").open())}
    for body in logs:
        record = records[(body["model"], body["metadata"]["sample_id"])]
        assert (body["prompt_name"], body["prompt_version_number"]) == ("math_answer", published["version"])
        assert body["input"]["content"][0]["text"] == record["prompt"]
        assert record["prompt"].endswith(f"Question: {record['inputs']['question']}\nAnswer:")
        assert before <= body["request_start_time"] < body["request_end_time"] <= after
        assert body["request_end_time"] - body["request_start_time"] == pytest.approx(record["latency_s"])
    assert sorted(len(members) for members in server.groups.values()) == [2, 2]  # variants of each sample


def test_python_dash_m_chared_flows_is_the_chared_command() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "chared_flows", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: chared ") and "generate" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "chared_flows", "run"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "usage: chared run" in bad.stderr


def test_an_effect_for_a_metric_the_run_lacks_is_named_in_a_warning(capsys):
    cli.warn_unused_effects({"exact_match": 0.1, "exact_mach": 0.2}, ["exact_match", "latency_s"])
    err = capsys.readouterr().err
    assert "--effect exact_mach=0.2 names no metric of this run" in err and "exact_match, latency_s" in err
    assert "exact_match=0.1" not in err
