"""Tiny real models saved as HF directories, and a finished A/B run directory that names them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chared_flows.decoding import DecodeConfig, Ensemble, Member
from chared_flows.records import RunRecord, SampleRecord, VariantSpec
from tests.fixtures.tiny import PAD_ROWS, tiny_model, tokenizer_for

PROMPT = "Question: what is 12 + 30? Answer:"
DECODING = {"max_new_chars": 12, "temperature": 0.0, "top_p": 1.0, "seed": None, "stop": [],
            "beam_width": 4, "prune_threshold": 0.001, "token_healing": True}


def save_tiny(folder: Path, kind: str, seed: int) -> str:
    tok = tokenizer_for(kind)
    tiny_model(len(tok) + PAD_ROWS, seed=seed).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("tiny-models")
    return [save_tiny(root / "a", "byte_level", 1), save_tiny(root / "b", "byte_fallback", 2)]


def greedy_text(members: list[str], variant: VariantSpec, prompt: str = PROMPT) -> str:
    values = {k: v for k, v in variant.decoding.items() if k != "chat"}
    config = DecodeConfig.build(weights=variant.weights, mode=variant.mode, rule=variant.rule, **values)
    return Ensemble([Member.load(m) for m in members], config).generate(prompt).text


def write_run(folder: Path, members: list[str], *, errors: int = 0, variant_name: str = "mix",
              report: dict | None = None, backend: str = "") -> Path:
    """A run directory as `chared ab` leaves it: run.json, records.jsonl (real greedy outputs), report/ab.json."""
    variant = VariantSpec(name=variant_name, members=tuple(members), weights=(0.7, 0.3), mode="chared",
                          rule="mixture", decoding=dict(DECODING))
    single = VariantSpec(name="a", members=(members[0],), mode="chared", decoding=dict(DECODING))
    run = RunRecord(run_id="r1", workflow="wf", workflow_version=1, template="math_answer", template_version=1,
                    template_hash="sha256:" + "0" * 64, dataset="{}", variants=[variant, single], n_samples=2, backend=backend)
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"run": run.to_dict()}))
    text = greedy_text(members, variant)
    rows = []
    for i, sid in enumerate(["s1", "s2"]):
        rows.append(SampleRecord(run_id="r1", workflow="wf", workflow_version=1, template="math_answer",
                                 template_version=1, template_hash=run.template_hash, variant=variant_name,
                                 sample_id=sid, inputs={}, output=text, prompt=PROMPT, scores={"exact": float(i)},
                                 error="boom" if i < errors else None))
    (folder / "records.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in rows))
    if report is not None:
        (folder / "report").mkdir()
        (folder / "report" / "ab.json").write_text(json.dumps(report))
    return folder


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow sqlite file with its tables made once (creating them takes seconds per store)."""
    import os

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def store(tmp_path, monkeypatch, empty_store) -> str:
    """A real local MLflow sqlite store of this test's own, as the default tracking URI."""
    import shutil

    import mlflow

    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    # subtle: the experiment's default artifact root would be ./mlruns of the test's cwd
    monkeypatch.chdir(tmp_path)
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(before)
