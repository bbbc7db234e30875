"""The workflow runner on the real engine with scripted members (no model weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chared_flows.errors import WorkflowError
from chared_flows.evaluation import base as evaluation
from chared_flows.flow.loader import WorkflowStore
from chared_flows.flow.runner import WorkflowRunner
from chared_flows.integrations.langchain import CharEDLLM
from chared_flows.prompts import TemplateStore
from chared_flows.records import VariantSpec
from tests.fixtures.tiny import scripted_member

WORKFLOW = """\
name: demo
version: 2
template: qa@1
dataset:
  kind: inline
  samples:
    - {id: s1, inputs: {question: "2+3"}, reference: 5}
    - {id: s2, inputs: {question: "1+1"}, reference: 2}
    - {id: s3, inputs: {question: "4+4"}, reference: 8}
parser: number
scorers: [exact]
decoding: {max_new_chars: 60, stop: ["\\n"]}
variants:
  - name: five
    models: [says_five]
  - name: pair
    models: [says_five, says_two]
    weights_sweep: [0.25, 0.75]
"""

SCRIPTS = {"says_five": "The answer is 5.\nignored", "says_two": "The answer is 2.\nignored"}


class Exact:
    name = "exact"

    def score(self, sample, output, parsed) -> dict[str, float]:
        return {"exact": float(parsed == sample.reference)}


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_run_start(self, run) -> None:
        self.events.append(("start", run))

    def on_record(self, record) -> None:
        self.events.append(("record", record))

    def on_run_end(self, run, summary, artifacts) -> None:
        self.events.append(("end", (run, summary, artifacts)))


def scripted_llm(variant: VariantSpec) -> CharEDLLM:
    members = [scripted_member(SCRIPTS[m], name=m) for m in variant.members]
    return CharEDLLM(
        preloaded_members=members,
        weights=None if variant.weights is None else list(variant.weights),
        mode=variant.mode,
        rule=variant.rule,
        **variant.decoding,
    )


@pytest.fixture(autouse=True)
def exact_scorer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(evaluation._SCORERS, "exact", lambda **_: Exact())


@pytest.fixture
def workflow_store(tmp_path: Path) -> WorkflowStore:
    (tmp_path / "templates" / "qa").mkdir(parents=True)
    (tmp_path / "templates" / "qa" / "v1.yaml").write_text(
        "name: qa\nversion: 1\ninput_variables: [question]\ntemplate: 'Q: {question}\\nA:'\n"
    )
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "demo.yaml").write_text(WORKFLOW)
    return WorkflowStore(tmp_path / "workflows", TemplateStore(tmp_path / "templates"))


def runner(store: WorkflowStore, out: Path, **kwargs: Any) -> WorkflowRunner:
    return WorkflowRunner(store.resolve("demo"), out_dir=out, run_id="r1", llm_factory=scripted_llm,
                          progress=False, **kwargs)


def test_run_yields_one_scored_record_per_sample_and_variant(workflow_store, tmp_path) -> None:
    sink = RecordingSink()
    records = runner(workflow_store, tmp_path / "runs", sinks=[sink]).run_all()
    assert len(records) == 3 * 3
    assert {r.variant for r in records} == {"five", "pair-w0.25", "pair-w0.75"}
    five = [r for r in records if r.variant == "five"]
    assert [r.output for r in five] == ["The answer is 5."] * 3  # the stop string cut it
    assert [r.parsed for r in five] == [5, 5, 5]
    assert [r.scores["exact"] for r in five] == [1.0, 0.0, 0.0]
    first = five[0]
    assert first.inputs == {"question": "2+3"} and first.reference == 5
    assert (first.workflow, first.workflow_version, first.template, first.template_version) == ("demo", 2, "qa", 1)
    assert first.template_hash.startswith("sha256:")
    assert first.finish_reason == "stop" and first.forward_passes > 0 and first.latency_s > 0
    # the sink saw start, each record, end with a summary and the artifact paths
    kinds = [kind for kind, _ in sink.events]
    assert kinds == ["start"] + ["record"] * 9 + ["end"]
    run, summary, artifacts = sink.events[-1][1]
    assert run.finished_at is not None and summary["five"]["exact"] == pytest.approx(1 / 3)
    assert all(Path(p).is_file() for p in artifacts)


def test_records_are_appended_as_jsonl_and_a_rerun_resumes(workflow_store, tmp_path) -> None:
    out = tmp_path / "runs"
    partial = runner(workflow_store, out).run()
    first_four = [next(partial) for _ in range(4)]  # then "crash"
    partial.close()
    lines = (out / "r1" / "records.jsonl").read_text().splitlines()
    assert [json.loads(line)["sample_id"] for line in lines] == [r.sample_id for r in first_four]
    rest = runner(workflow_store, out).run_all()
    assert len(rest) == 5
    done = {(r.sample_id, r.variant) for r in first_four}
    assert not done & {(r.sample_id, r.variant) for r in rest}
    assert runner(workflow_store, out).run_all() == []  # all finished: nothing to do
    assert len((out / "r1" / "records.jsonl").read_text().splitlines()) == 9


def test_a_run_id_cannot_be_reused_for_a_changed_workflow(workflow_store, tmp_path) -> None:
    out = tmp_path / "runs"
    runner(workflow_store, out, limit=1).run_all()
    path = workflow_store.path_of("demo")
    path.write_text(path.read_text().replace("max_new_chars: 60", "max_new_chars: 61"))
    with pytest.raises(WorkflowError, match="different content.*another --run-id"):
        runner(workflow_store, out).run_all()


def test_limit_and_torn_last_line(workflow_store, tmp_path) -> None:
    out = tmp_path / "runs"
    records = runner(workflow_store, out, limit=1).run_all()
    assert len(records) == 3 and {r.sample_id for r in records} == {"s1"}
    with (out / "r1" / "records.jsonl").open("a") as handle:
        handle.write('{"run_id": "r1", "sample_')  # killed mid-write
    assert runner(workflow_store, out, limit=1).run_all() == []


def tiny_window_member():
    """A member whose context window (4 tokens) no rendered prompt fits: every sample fails."""
    from chared_flows.decoding import Member, MemberAssets
    from tests.fixtures.tiny import tokenizer_for

    tok = tokenizer_for("byte_level")
    return Member(MemberAssets.build("tiny-window", tok, lambda: None, num_rows=len(tok), context_window=4))


def test_errors_on_one_sample_are_recorded_and_retried(workflow_store, tmp_path) -> None:
    def broken_factory(variant):
        return CharEDLLM(preloaded_members=[tiny_window_member()])

    run = WorkflowRunner(workflow_store.resolve("demo"), out_dir=tmp_path, run_id="r2",
                         llm_factory=broken_factory, progress=False, limit=1)
    records = run.run_all()
    assert len(records) == 3 and all("context window is 4" in r.error for r in records)
    again = WorkflowRunner(workflow_store.resolve("demo"), out_dir=tmp_path, run_id="r2",
                           llm_factory=scripted_llm, progress=False, limit=1).run_all()
    assert len(again) == 3 and all(r.error is None for r in again)


def test_bad_run_id_is_rejected(workflow_store, tmp_path) -> None:
    with pytest.raises(WorkflowError, match="run id"):
        WorkflowRunner(workflow_store.resolve("demo"), out_dir=tmp_path, run_id="../escape")


def test_records_carry_the_sample_domain_and_variants_their_tokenizer_families(workflow_store, tmp_path) -> None:
    path = workflow_store.path_of("demo")
    path.write_text(path.read_text().replace("reference: 5}", "reference: 5, domain: math}"))
    sink = RecordingSink()
    records = runner(workflow_store, tmp_path / "runs", sinks=[sink], limit=1).run_all()
    assert {r.domain for r in records} == {"math"}
    run = sink.events[0][1]
    families = {v.name: v.tokenizer_families for v in run.variants}
    assert families == {f: ("byte_level",) * n for f, n in (("five", 1), ("pair-w0.25", 2), ("pair-w0.75", 2))}


def test_interleave_runs_every_variant_on_a_batch_of_samples_before_the_next(workflow_store, tmp_path) -> None:
    records = runner(workflow_store, tmp_path / "runs", interleave=True, batch_size=1).run_all()
    assert [r.sample_id for r in records] == ["s1"] * 3 + ["s2"] * 3 + ["s3"] * 3
    records = runner(workflow_store, tmp_path / "runs2", interleave=True, batch_size=2).run_all()
    assert [(r.variant, r.sample_id) for r in records][:4] == [("five", "s1"), ("five", "s2"),
                                                                ("pair-w0.25", "s1"), ("pair-w0.25", "s2")]
    assert [r.sample_id for r in records][6:] == ["s3"] * 3
    assert [r.batch_size for r in records] == [2] * 6 + [1] * 3


def test_the_timed_sub_sample_decodes_alone_and_the_rest_in_batches(workflow_store, tmp_path) -> None:
    records = runner(workflow_store, tmp_path / "runs", interleave=True, batch_size=8, timed_samples=1).run_all()
    assert [(r.sample_id, r.batch_size) for r in records] == [("s1", 1)] * 3 + [("s2", 2), ("s3", 2)] * 3
    assert [r.timed for r in records] == [True] * 3 + [False] * 6
    assert [r.variant for r in records][:3] == ["five", "pair-w0.25", "pair-w0.75"]
    with pytest.raises(WorkflowError, match="timed samples -1"):
        runner(workflow_store, tmp_path / "runs", timed_samples=-1)


def test_timings_are_compared_on_the_pairs_that_decoded_alone() -> None:
    from chared_flows.evaluation.ab import compare
    from chared_flows.records import SampleRecord

    def rec(variant, sample, latency, batch, timed=False):
        return SampleRecord("r", "w", 1, "t", 1, "h", variant, sample, {}, "", latency_s=latency, batch_size=batch,
                            forward_passes=10, timed=timed)

    variants = [VariantSpec("a", ("a",)), VariantSpec("e", ("a", "b"), (0.5, 0.5))]
    records = [rec("a", "s1", 1.0, 1, True), rec("e", "s1", 3.0, 1, True), rec("a", "s2", 1.1, 1, True),
               rec("e", "s2", 3.2, 1, True), rec("a", "s3", 9.0, 8), rec("e", "s3", 9.5, 8)]  # batched: other latencies
    ab = compare(records, variants, metrics=["latency_s", "forward_passes"]).to_dict()
    means = {(s["variant"], s["metric"]): (s["n"], s["mean"]) for s in ab["variants"]}
    assert means[("a", "latency_s")] == (2, pytest.approx(1.05)) and means[("e", "latency_s")] == (2, pytest.approx(3.1))
    assert means[("a", "forward_passes")][0] == 3  # passes do not change with the batch: every pair counts
    # a pair that happened to decode alone (a last chunk of one sample) is not a timed sub-sample
    untimed = [rec(v, f"s{i}", 1.0 + i, 8 if i < 8 else 1) for v in ("a", "e") for i in range(9)]
    ab = compare(untimed, variants, metrics=["latency_s"]).to_dict()
    assert {s["n"] for s in ab["variants"]} == {9} and ab["comparisons"][0]["n"] == 9


def test_a_batch_never_holds_two_variants_while_it_is_timed(workflow_store, tmp_path, monkeypatch) -> None:
    """Pairs of different variants never decode side by side (their latencies would mix)."""
    import threading
    import time as _time

    from chared_flows.flow.pairs import PairRunner

    in_flight: dict[str, int] = {}
    together: list[set[str]] = []
    lock = threading.Lock()
    original = PairRunner.run

    def run(self, variant, sample):
        with lock:
            in_flight[variant.name] = in_flight.get(variant.name, 0) + 1
            together.append({name for name, n in in_flight.items() if n})
        _time.sleep(0.05)  # long enough for the next pairs to start beside this one
        try:
            return original(self, variant, sample)
        finally:
            with lock:
                in_flight[variant.name] -= 1

    monkeypatch.setattr(PairRunner, "run", run)
    records = runner(workflow_store, tmp_path / "runs", interleave=True, batch_size=8).run_all()
    assert len(records) == 9 and len(together) == 9
    assert all(len(names) == 1 for names in together), together
    assert {r.batch_size for r in records} == {3}

def test_dataset_overrides_replace_dataset_keys(workflow_store, tmp_path) -> None:
    other = [{"id": "x", "inputs": {"question": "9"}, "reference": 5}]
    run = runner(workflow_store, tmp_path / "runs", dataset_overrides={"samples": other})
    assert {r.sample_id for r in run.run_all()} == {"x"}
    assert '"id": "x"' in run.run_record().dataset


def test_a_resumed_run_replays_earlier_records_to_sinks_and_the_finisher_adds_artifacts(workflow_store, tmp_path) -> None:
    out = tmp_path / "runs"
    partial = runner(workflow_store, out).run()
    [next(partial) for _ in range(4)]
    partial.close()
    sink, seen = RecordingSink(), {}

    def finisher(run, records):
        seen["n"] = len(records)
        report = tmp_path / "report.md"
        report.write_text("report")
        return [report]

    new = runner(workflow_store, out, sinks=[sink], finisher=finisher).run_all()
    assert len(new) == 5 and seen["n"] == 9
    kinds = [kind for kind, _ in sink.events]
    assert kinds == ["start"] + ["record"] * 9 + ["end"]  # 4 replayed, 5 new
    _, summary, artifacts = sink.events[-1][1]
    assert summary["five"]["n_samples"] == 3 and tmp_path / "report.md" in artifacts


# --- records under faults ---------------------------------------------------------


def lines_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "r1" / "records.jsonl").read_text().splitlines()]


def test_a_torn_last_line_is_repaired_on_resume_and_nothing_is_lost(workflow_store, tmp_path) -> None:
    out = tmp_path / "runs"
    runner(workflow_store, out, limit=1).run_all()
    with (out / "r1" / "records.jsonl").open("a") as handle:
        handle.write('{"run_id": "r1", "sample_')  # killed mid-write
    resumed = runner(workflow_store, out, limit=2).run_all()
    assert len(resumed) == 3
    rows = lines_of(out)  # every line parses: the fragment did not swallow the next record
    assert sorted((r["sample_id"], r["variant"]) for r in rows) == sorted(
        (s, v) for s in ("s1", "s2") for v in ("five", "pair-w0.25", "pair-w0.75"))
    assert (out / "r1" / "records.jsonl.torn").read_text() == '{"run_id": "r1", "sample_\n'
    assert len(runner(workflow_store, out).run_all()) == 3  # later resumes still work
    assert len(lines_of(out)) == 9


def test_a_complete_last_line_without_its_newline_is_kept(workflow_store, tmp_path) -> None:
    out = tmp_path / "runs"
    runner(workflow_store, out, limit=1).run_all()
    path = out / "r1" / "records.jsonl"
    path.write_text(path.read_text().rstrip("\n"))
    assert runner(workflow_store, out, limit=1).run_all() == []
    assert len(runner(workflow_store, out, limit=2).run_all()) == 3 and len(lines_of(out)) == 6


def test_a_retried_pair_replaces_its_error_row(workflow_store, tmp_path) -> None:
    def broken_factory(variant):
        return CharEDLLM(preloaded_members=[tiny_window_member()])  # every prompt overflows its window

    def run_with(factory):
        return WorkflowRunner(workflow_store.resolve("demo"), out_dir=tmp_path, run_id="r2",
                              llm_factory=factory, progress=False, limit=1).run_all()

    from chared_flows.flow.runner import ResultsFile, summarize

    results = ResultsFile(tmp_path / "r2" / "records.jsonl")
    for attempt in range(3):  # the pairs fail again on every resume: still one row each
        assert all(r.error for r in run_with(broken_factory))
        assert len(results.path.read_text().splitlines()) == 3, attempt
        assert {v["n_samples"] for v in summarize(results.read()).values()} == {1.0}
    assert all(r.error is None for r in run_with(scripted_llm))
    rows = [json.loads(line) for line in results.path.read_text().splitlines()]
    assert len(rows) == 3 and all(r["error"] is None for r in rows)
    assert summarize(results.read())["five"] == {
        "n_samples": 1.0, "n_errors": 0.0, "exact": 1.0, "latency_s": pytest.approx(rows[0]["latency_s"]),
        "chars_per_s": pytest.approx(rows[0]["chars_per_s"]), "forward_passes": rows[0]["forward_passes"],
        "forward_passes_total": rows[0]["forward_passes"], "batch_size": 1.0}  # limit 1: alone


def test_a_second_runner_on_the_same_run_id_is_refused_while_the_first_runs(workflow_store, tmp_path) -> None:
    out = tmp_path / "runs"
    first = runner(workflow_store, out).run()
    next(first)  # holds the run directory
    with pytest.raises(WorkflowError, match=r"run 'r1' is in use by another process \(pid \d+\)"):
        runner(workflow_store, out).run_all()
    assert len(list(first)) == 8
    assert len(lines_of(out)) == 9
    assert runner(workflow_store, out).run_all() == []  # released at the end


def test_records_keep_the_prompt_the_call_window_and_the_generation(workflow_store, tmp_path) -> None:
    import time as clock

    before = clock.time()
    records = runner(workflow_store, tmp_path / "runs", limit=2).run_all()
    first = records[0]
    assert first.prompt == r"Q: 2+3\nA:"  # the fixture template is single-quoted YAML
    assert before <= first.timestamp - first.latency_s <= first.timestamp <= clock.time()
    assert [r.sample_index for r in records if r.variant == "five"] == [0, 1]
    pair = next(r for r in records if r.variant == "pair-w0.25")
    assert set(pair.generation["output_tokens"]) == {"says_five", "says_two"}
    assert pair.generation["rounds"] >= 1 and all(v > 0 for v in pair.generation["prompt_tokens"].values())


class AbortSink(RecordingSink):
    def on_run_abort(self, run, status) -> None:
        self.events.append(("abort", status))


def test_sinks_hear_an_interrupted_or_failed_run(workflow_store, tmp_path) -> None:
    sink = AbortSink()
    partial = runner(workflow_store, tmp_path / "a", sinks=[sink]).run()
    next(partial)
    partial.close()
    assert sink.events[-1] == ("abort", "KILLED")

    class Boom(RecordingSink):
        def on_record(self, record) -> None:
            raise RuntimeError("sink broke")

    failing = AbortSink()
    with pytest.raises(RuntimeError, match="sink broke"):
        runner(workflow_store, tmp_path / "b", sinks=[failing, Boom()]).run_all()
    assert failing.events[-1] == ("abort", "FAILED")


def test_run_json_says_when_a_pass_finished(workflow_store, tmp_path) -> None:
    out = tmp_path / "runs"
    partial = runner(workflow_store, out).run()
    next(partial)
    partial.close()
    assert json.loads((out / "r1" / "run.json").read_text())["run"]["finished_at"] is None
    runner(workflow_store, out, limit=2).run_all()
    run = json.loads((out / "r1" / "run.json").read_text())["run"]
    assert run["finished_at"] is not None and run["limit"] == 2 and run["n_samples"] == 2
    assert run["dataset_hash"].startswith("sha256:")


# --- bits per character -----------------------------------------------------------

BPC_WORKFLOW = """\
name: bpc
version: 1
template: ident@1
dataset:
  kind: inline
  samples:
    - {id: prose, inputs: {text: "The quick brown fox."}, reference: "The quick brown fox.", domain: prose}
    - {id: code, inputs: {text: "def add(a, b):"}, reference: "def add(a, b):", domain: code}
parser: text
scorers: [bits_per_char]
decoding: {max_new_chars: 1}
variants:
  - {name: bl, models: [bl]}
  - {name: bf, models: [bf]}
  - {name: both, models: [bl, bf], weights: [0.5, 0.5], rule: product}
"""


def test_bits_per_char_scores_the_reference_with_the_variants_ensemble_in_exact_mode(tmp_path) -> None:
    from chared_flows.decoding import Ensemble
    from tests.fixtures.tiny import tiny_member

    members = {"bl": tiny_member("byte_level", seed=1, name="bl"), "bf": tiny_member("byte_fallback", seed=2, name="bf")}
    (tmp_path / "templates" / "ident").mkdir(parents=True)
    (tmp_path / "templates" / "ident" / "v1.yaml").write_text(
        "name: ident\nversion: 1\ninput_variables: [text]\ntemplate: '{text}'\n")
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "bpc.yaml").write_text(BPC_WORKFLOW)
    store = WorkflowStore(tmp_path / "workflows", TemplateStore(tmp_path / "templates"))

    def factory(variant):
        return CharEDLLM(preloaded_members=[members[m] for m in variant.members],
                         weights=None if variant.weights is None else list(variant.weights),
                         mode=variant.mode, rule=variant.rule, **variant.decoding)

    records = WorkflowRunner(store.resolve("bpc"), out_dir=tmp_path / "runs", run_id="b1", llm_factory=factory,
                             progress=False).run_all()
    got = {(r.variant, r.sample_id): r.scores["bits_per_char"] for r in records}
    assert len(got) == 6 and all(r.error is None for r in records)
    text = "def add(a, b):"
    want = Ensemble([members["bl"], members["bf"]], weights=[0.5, 0.5], mode="exact", rule="product").score("", text)
    # rel 1e-6, not 1e-9: pairs run concurrently, so a scoring pass may share a batched forward
    # with another pair's pass, and a float32 matrix product rounds differently in a batch.
    assert got[("both", "code")] == pytest.approx(want.bits_per_char, rel=1e-6)
    alone = Ensemble([members["bf"]], mode="exact").score("", text).bits_per_char
    assert got[("bf", "code")] == pytest.approx(alone, rel=1e-6)
    assert got[("bl", "prose")] != got[("bf", "prose")]
    # a scoring workflow's timings are the scoring's: scored characters per second, not the
    # one generated character's
    for r in records:
        assert r.generation["timing"] == "scoring" and r.generation["scored_chars"] == len(r.reference)
        assert r.chars_per_s > 0 and r.latency_s > r.generation["scored_chars"] / r.chars_per_s * 0.99


def test_bits_per_char_needs_a_text_reference(workflow_store, tmp_path) -> None:
    from chared_flows.evaluation.scorers import BitsPerChar
    from chared_flows.errors import ConfigError
    from chared_flows.evaluation.base import Sample

    with pytest.raises(ConfigError, match="sample 'x' has no reference text"):
        BitsPerChar().text_of(Sample("x", {}, reference=5))
    with pytest.raises(ConfigError, match="mode 'fast' is unknown"):
        BitsPerChar(mode="fast")


def test_pairs_decode_together_and_records_come_in_order(workflow_store, tmp_path) -> None:
    """batch_size 8 vs 1: the same records in the same order (scripted members are deterministic)."""
    one = runner(workflow_store, tmp_path / "one", batch_size=1).run_all()
    many = runner(workflow_store, tmp_path / "many", batch_size=8).run_all()
    key = lambda r: (r.variant, r.sample_id, r.output, r.scores)  # noqa: E731
    assert [key(r) for r in many] == [key(r) for r in one]


def test_a_closed_run_cancels_the_generations_in_flight(workflow_store, tmp_path) -> None:
    run = runner(workflow_store, tmp_path / "runs", batch_size=4).run()
    next(run)
    run.close()  # the caller stops: in-flight pairs are cancelled, none is written
    assert len(lines_of(tmp_path / "runs")) == 1
    assert len(runner(workflow_store, tmp_path / "runs").run_all()) == 3 * 3 - 1  # a resume does the rest


def test_batch_size_must_be_positive(workflow_store, tmp_path) -> None:
    with pytest.raises(WorkflowError, match="batch size 0 must be an integer >= 1"):
        runner(workflow_store, tmp_path, batch_size=0)


PLAIN_WORKFLOW = """\
name: plain
version: 1
template: qa@1
dataset:
  kind: inline
  samples:
    - {id: s1, inputs: {question: "2+3"}, reference: 5}
decoding: {max_new_chars: 6, mode: chared}
variants:
  - name: solo
    models: [MODEL]
"""


def test_a_plain_run_decodes_with_the_engine_and_never_imports_langchain(tmp_path, monkeypatch) -> None:
    """The default LLM factory is the engine's (flow/llm.py): `chared run` needs no LangChain."""
    import sys

    from chared_flows.decoding import Ensemble, Member
    from tests.fixtures.tiny import PAD_ROWS, byte_level_tokenizer, tiny_model

    tok = byte_level_tokenizer()
    tiny_model(len(tok) + PAD_ROWS, seed=3).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    (tmp_path / "templates" / "qa").mkdir(parents=True)
    (tmp_path / "templates" / "qa" / "v1.yaml").write_text(
        "name: qa\nversion: 1\ninput_variables: [question]\ntemplate: 'Q: {question}\\nA:'\n")
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "plain.yaml").write_text(PLAIN_WORKFLOW.replace("MODEL", str(tmp_path / "m")))
    store = WorkflowStore(tmp_path / "workflows", TemplateStore(tmp_path / "templates"))
    for name in [n for n in sys.modules if n.split(".")[0] == "langchain_core" or n.startswith("chared_flows.integrations")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "langchain_core", None)  # `import langchain_core` now fails

    sink = RecordingSink()
    (record,) = WorkflowRunner(store.resolve("plain"), out_dir=tmp_path / "runs", run_id="p1", sinks=[sink],
                               progress=False).run_all()
    assert "chared_flows.integrations.langchain" not in sys.modules
    assert record.prompt.startswith("Q: 2+3")
    want = Ensemble([Member.load(str(tmp_path / "m"))], mode="chared").generate(record.prompt, max_new_chars=6)
    assert record.error is None and record.output == want.text and record.finish_reason == want.finish_reason
    assert record.forward_passes == want.stats.total_forward_passes > 0
    assert sink.events[0][1].variants[0].tokenizer_families == ("byte_level",)
