"""Property tests (Hypothesis): whatever a careless user or a hostile server gives, the package either
works or raises one of its own errors with a one-line message. Never another exception, never a
silent empty result. Bounded examples and in-process fakes (scripted members, a fake server
reply): seconds, no model weights. A failure prints the smallest input that breaks the rule.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import chared_flows.integrations.langchain as lc  # noqa: E402
from chared_flows import cli  # noqa: E402
from chared_flows.decoding import DecodeConfig, Member  # noqa: E402
from chared_flows.decoding.backends.served import ServedBackend  # noqa: E402
from chared_flows.decoding.config import DecodeFields  # noqa: E402
from chared_flows.errors import BackendError, CharedError  # noqa: E402
from chared_flows.evaluation import base as evaluation  # noqa: E402
from chared_flows.flow.loader import WorkflowStore  # noqa: E402
from chared_flows.prompts import TemplateStore  # noqa: E402
from tests.fixtures.tiny import scripted_member  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FAST = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def one_line(exc: BaseException) -> None:
    message = str(exc)
    assert message and "\n" not in message, repr(message)


# -- values a user can type or a file can hold ----------------------------------------------

text = st.text(alphabet=st.characters(), max_size=12)  # every code point, lone surrogates included
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**12, max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True), text, st.binary(max_size=6),
    st.sampled_from([0, 1, -1, 0.5, 2, "", "exact", "chared", "mixture", "product", "adaptive", "\n", "1e309"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(text, inner, max_size=3)), max_leaves=8)
field_names = st.sampled_from(sorted(DecodeFields.model_fields) + ["beam", "weight", "Stop"])


@settings(FAST, max_examples=150)
@given(st.dictionaries(field_names, st.one_of(scalars, st.lists(scalars, max_size=3), values), min_size=1, max_size=3))
def test_decode_config_fields(fields):
    try:
        config = DecodeConfig.build(**fields)
    except CharedError as exc:
        one_line(exc)
        return
    # accepted: every value is one the engine can use
    assert 1 <= config.max_new_chars and config.temperature >= 0 and 0 < config.top_p <= 1
    assert all(isinstance(s, str) and s and s.encode("utf-8") for s in config.stop)
    assert config.weights is None or (all(math.isfinite(w) and w >= 0 for w in config.weights) and sum(config.weights) > 0)


# -- workflow YAML documents ------------------------------------------------------------------

GOOD = {
    "name": "tiny", "version": 1, "template": "math_answer@1",
    "dataset": {"kind": "inline", "samples": [{"id": "a", "inputs": {"question": "q1"}, "reference": 5}]},
    "parser": "number", "scorers": ["exact"], "decoding": {"max_new_chars": 40},
    "variants": [{"name": "five", "models": ["five"]}, {"name": "mix", "models": ["five", "two"], "weights_sweep": [0.5]}],
}
PATHS = [("name",), ("version",), ("template",), ("dataset",), ("dataset", "kind"), ("dataset", "samples"),
         ("parser",), ("scorers",), ("decoding",), ("decoding", "max_new_chars"), ("decoding", "stop"), ("variants",),
         ("variants", 0), ("variants", 0, "models"), ("variants", 1, "weights_sweep"), ("variants", 1, "weights"),
         ("variants", 0, "mode"), ("variants", 0, "decoding"), ("trackers",)]
yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True),
              st.text(alphabet=st.characters(codec="utf-8"), max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)


def mutate(document: dict, path: tuple, value) -> dict:
    import copy

    doc = copy.deepcopy(document)
    node = doc
    for key in path[:-1]:
        if isinstance(node, dict) and key in node or isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return doc
    if isinstance(node, dict):
        node[path[-1]] = value
    elif isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node):
        node[path[-1]] = value
    return doc


@pytest.fixture(scope="module")
def workflow_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf")
    shutil.copytree(REPO / "templates", root / "templates")
    (root / "workflows").mkdir()
    return root


@FAST
@given(st.lists(st.tuples(st.sampled_from(PATHS), yaml_values), min_size=1, max_size=3), st.booleans())
def test_workflow_documents(workflow_dir, edits, drop):
    doc = GOOD
    for path, value in edits:
        doc = mutate(doc, path, value)
    if drop:
        doc = {k: v for k, v in doc.items() if k != edits[0][0][0]}
    path = workflow_dir / "workflows" / "fuzz.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    store = WorkflowStore(workflow_dir / "workflows", TemplateStore(workflow_dir / "templates"))
    try:
        resolved = store.resolve("fuzz")
        store.check_samples(resolved, resolved.spec.dataset)
    except CharedError as exc:
        one_line(exc)
        return
    assert resolved.variants  # accepted: something to run


@FAST
@given(st.binary(max_size=60))
def test_workflow_files_of_any_bytes(workflow_dir, data):
    (workflow_dir / "workflows" / "bytes.yaml").write_bytes(data)
    store = WorkflowStore(workflow_dir / "workflows", TemplateStore(workflow_dir / "templates"))
    with pytest.raises(CharedError) as err:
        store.resolve("bytes")
    one_line(err.value)


# -- CLI argument lists -----------------------------------------------------------------------

SCRIPTS = {"five": "The answer is 5.\nQuestion: more", "two": "The answer is 2.\nQuestion: more"}
WORKFLOW = yaml.safe_dump(GOOD)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    shutil.copytree(REPO / "templates", root / "templates")
    (root / "workflows").mkdir()
    (root / "workflows" / "tiny.yaml").write_text(WORKFLOW)
    return root


@pytest.fixture
def scripted(project, monkeypatch):
    class Exact:
        name = "exact"

        def score(self, sample, output, parsed):
            return {"exact": float(parsed == sample.reference)}

    def load(spec, chat=False, **_):
        if spec not in SCRIPTS:
            raise cli.ConfigError(f"unknown model {spec!r} (fuzz fake)")
        return scripted_member(SCRIPTS[spec], name=spec)

    monkeypatch.chdir(project)
    monkeypatch.setitem(evaluation._SCORERS, "exact", lambda **_: Exact())
    monkeypatch.setattr(lc, "_load_member", load)
    monkeypatch.setattr(Member, "load", staticmethod(load))
    monkeypatch.delenv("CHARED_TEMPLATES_DIR", raising=False)
    monkeypatch.delenv("CHARED_WORKFLOWS_DIR", raising=False)
    return project


junk = st.one_of(text, st.sampled_from(["-1", "0", "1", "nan", "inf", "1e400", "", "-", "--", "five,", ",",
                                        "five,two", "0.5,0.5", "-1,2", "\\n", "\udcff", "tiny", "math_answer@1",
                                        "math_answer@9", "nope@latest", "x" * 300]))
flags = st.sampled_from(["--models", "--weights", "--stop", "--max-new-chars", "--temperature", "--top-p", "--seed",
                         "--mode", "--rule", "--beam-width", "--device", "--chat", "-e", "--limit", "--run-id",
                         "--batch-size", "--threads", "--dataset-path", "--out"])
commands = st.sampled_from([["generate"], ["templates", "list"], ["templates", "show"], ["workflows", "validate"],
                            ["workflows", "list"], ["run", "tiny", "--no-track", "--no-progress"]])


@settings(max_examples=40, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(commands, st.lists(st.one_of(flags, junk), max_size=6))
@example(["generate"], ["Q: \udcff\udcfe abc"])  # the issue's own finds (argv bytes 0xff 0xfe)
@example(["generate"], ["Q", "--stop", "\udcff"])
@example(["generate"], ["Q", "--stop", "1", "--stop", "\ud800"])
def test_cli_argument_lists(scripted, capsys, command, words):
    argv = command + words
    if command == ["generate"] and "--models" not in words:
        argv += ["--models", "five"]  # never the real default models
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse: a usage error (2) or --help/--version (0)
        assert exc.code in (0, 2)
        capsys.readouterr()
        return
    _out, err = capsys.readouterr()
    assert code in (0, 2, 4), (code, err)
    if code:
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert errors, err
    assert "Traceback" not in err


# -- served-member replies --------------------------------------------------------------------

ROWS = 40
logprobs = st.one_of(st.floats(min_value=-30.0, max_value=0.0), st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from([-9999.0, 0.0, 1e-7, -1e-300]))
entry = st.fixed_dictionaries({"id": st.one_of(st.integers(-3, ROWS + 3), values),
                               "logprob": st.one_of(logprobs, logprobs, values)})
llama_replies = st.one_of(
    values,
    st.fixed_dictionaries({"completion_probabilities": st.one_of(
        values, st.lists(st.fixed_dictionaries({"top_logprobs": st.one_of(values, st.lists(entry, max_size=7))}),
                         max_size=2))}),
)
openai_replies = st.one_of(
    values,
    st.builds(lambda top: {"choices": [{"logprobs": {"top_logprobs": [top]}}]},
              st.dictionaries(st.one_of(st.builds("token_id:{}".format, st.integers(-2, ROWS + 2)), text),
                              st.one_of(logprobs, logprobs, values), max_size=6)),
)


def check_reply(api: str, reply, monkeypatch) -> None:
    backend = ServedBackend("http://127.0.0.1:9", api=api, model="m", top_k=5, num_rows=ROWS)
    monkeypatch.setattr(backend, "_post", lambda path, body: reply)
    try:
        logits = backend.new_runner().next_logits([1, 2])
    except BackendError as exc:
        one_line(exc)
        assert "http://127.0.0.1:9" in str(exc)
        return
    # accepted: a distribution the engine can use, never an empty or NaN one
    assert logits.shape == (ROWS,) and not logits.isnan().any() and (logits > -math.inf).any()
    assert float(logits.double().exp().sum()) <= 1.0 + 1e-3


@FAST
@given(llama_replies)
def test_llama_cpp_replies(monkeypatch, reply):
    check_reply("llama_cpp", reply, monkeypatch)


@FAST
@given(openai_replies)
def test_openai_replies(monkeypatch, reply):
    check_reply("openai", reply, monkeypatch)
