"""Promote to a real local MLflow sqlite registry and load back through pyfunc (tiny models)."""

from __future__ import annotations

import pytest

from chared_flows.combinations.evidence import combination_from_run
from chared_flows.combinations.registry import load_combination, parse_uri, promote
from chared_flows.errors import ConfigError, TrackingError
from tests.unit.combinations.conftest import PROMPT, write_run


@pytest.fixture()
def combo(tiny_dirs, tmp_path):
    report = {"comparisons": [{"ensemble": "mix", "single": "a", "metric": "exact", "p_holm": 0.01, "verdict": "better"}]}
    return combination_from_run(write_run(tmp_path / "r1", tiny_dirs, report=report), "mix")


def test_promote_registers_once_with_alias_and_evidence_tags(combo, store):
    import mlflow

    first = promote(combo, "tiny-combo", alias="champion")
    again = promote(combo, "tiny-combo", alias="champion")
    assert first.created and first.version == 1
    assert not again.created and again.version == 1  # same content: no second version
    client = mlflow.MlflowClient(store, store)
    version = client.get_model_version_by_alias("tiny-combo", "champion")
    tags = version.tags
    assert int(version.version) == 1 and tags["chared.content_hash"] == combo.content_hash
    assert tags["chared.evidence.run_id"] == "r1" and tags["chared.evidence.variant"] == "mix"
    assert tags["chared.metric.exact"] == "0.5" and '"vs.a.exact": "better (p_holm 0.01)"' in tags["chared.verdicts"]
    assert len(client.search_model_versions("name = 'tiny-combo'")) == 1


def test_pyfunc_loads_by_alias_and_reproduces_the_record(combo, store, tmp_path):
    import json

    import mlflow
    import pandas as pd

    promote(combo, "tiny-combo", alias="champion")
    record = json.loads((tmp_path / "r1" / "records.jsonl").read_text().splitlines()[0])
    model = mlflow.pyfunc.load_model("models:/tiny-combo@champion")
    assert model.predict([PROMPT]) == [record["output"]]
    assert model.predict(pd.DataFrame({"prompt": [PROMPT, PROMPT]})) == [record["output"]] * 2
    loaded = load_combination("models:/tiny-combo@champion")
    assert loaded.version == 1 and loaded.combination == combo


def test_unknown_names_aliases_versions_are_one_line(combo, store):
    promote(combo, "tiny-combo", alias="champion")
    with pytest.raises(ConfigError, match=r"no registered model 'nope'"):
        load_combination("models:/nope@champion")
    with pytest.raises(ConfigError, match=r"has no alias 'prod' \(aliases: champion; versions: 1\)"):
        load_combination("models:/tiny-combo@prod")
    with pytest.raises(ConfigError, match=r"has no version 7"):
        load_combination("models:/tiny-combo/7")
    with pytest.raises(ConfigError, match="is not models:/NAME@ALIAS"):
        parse_uri("runs:/abc/model")


def test_a_registry_that_is_down_is_one_line_and_nothing_is_registered(combo, store):
    from tests.support.mlflow_server import free_port

    with pytest.raises(TrackingError, match=r"unreachable .*start it"):
        promote(combo, "tiny-combo", tracking_uri=f"http://127.0.0.1:{free_port()}")


def test_a_failed_promotion_leaves_nothing_half_registered(combo, store, monkeypatch):
    import mlflow

    from chared_flows.combinations import registry

    def broken(combination):
        raise OSError("disk full")

    monkeypatch.setattr(registry, "log_model", broken)
    with pytest.raises(TrackingError, match="nothing was registered: OSError: disk full"):
        promote(combo, "tiny-combo", alias="champion")
    client = mlflow.MlflowClient(store, store)
    assert client.search_registered_models() == []
    runs = client.search_runs([client.get_experiment_by_name("chared-combinations").experiment_id])
    assert runs == []  # the run was deleted


def test_a_changed_member_is_refused_when_loading(combo, store, tiny_dirs, tmp_path):
    import shutil

    import mlflow

    from chared_flows.combinations.evidence import combination_from_run

    copy = tmp_path / "copy"
    shutil.copytree(tiny_dirs[0], copy)
    run_dir = tmp_path / "r2"
    from tests.unit.combinations.conftest import write_run as write

    moved = combination_from_run(write(run_dir, [str(copy), tiny_dirs[1]]), "mix")
    promote(moved, "moved", alias="champion")
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    with pytest.raises(ConfigError, match=r"changed since it was promoted"):
        mlflow.pyfunc.load_model("models:/moved@champion")


def test_langchain_models_load_from_the_registry(combo, store, tmp_path):
    import json

    from chared_flows.integrations.langchain import CharEDLLM, ChatCharED

    promote(combo, "tiny-combo", alias="champion")
    record = json.loads((tmp_path / "r1" / "records.jsonl").read_text().splitlines()[0])
    llm = CharEDLLM.from_registry("models:/tiny-combo@champion")
    assert llm.models == combo.members and tuple(llm.weights) == (0.7, 0.3) and llm.max_new_chars == 12
    assert llm.registry_source == "models:/tiny-combo@champion (version 1)"
    assert llm.invoke(PROMPT) == record["output"]
    chat = ChatCharED.from_registry("models:/tiny-combo/1", max_tokens=5)
    assert chat.max_new_chars == 5 and chat.models == combo.members
    with pytest.raises(ConfigError, match="has no alias 'prod'"):
        CharEDLLM.from_registry("models:/tiny-combo@prod")


def test_cli_promote_and_generate_with_a_combination(combo, store, tiny_dirs, tmp_path, capsys, monkeypatch):
    import json

    from chared_flows.cli import main

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "r1"
    write_run(run_dir, tiny_dirs)
    record = json.loads((run_dir / "records.jsonl").read_text().splitlines()[0])
    assert main(["promote", "r1", "mix", "--name", "cli-combo", "--alias", "champion"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "models:/cli-combo@champion" and "registered" in err
    assert main(["promote", "r1", "mix", "--name", "cli-combo"]) == 0
    assert "already registered (same content)" in capsys.readouterr().err
    assert main(["generate", PROMPT, "--combination", "models:/cli-combo@champion"]) == 0
    assert capsys.readouterr().out == record["output"] + "\n"
    assert main(["generate", PROMPT, "--combination", "models:/cli-combo@champion", "--weights", "0.5,0.5"]) == 2
    assert "--weights would change the combination" in capsys.readouterr().err
    assert main(["promote", "r1", "nope", "--name", "cli-combo"]) == 2
    assert capsys.readouterr().err.startswith("error: run 'r1' has no variant 'nope'")


def test_generate_with_a_bad_combination_is_one_line(capsys):
    from chared_flows.cli import main
    from tests.support.mlflow_server import free_port

    assert main(["generate", "hi", "--combination", "runs:/abc/model"]) == 2
    assert "error: registry URI 'runs:/abc/model' is not models:/NAME@ALIAS" in capsys.readouterr().err
    assert main(["generate", "hi", "--combination", "models:/c@champion", "--models", "smollm2"]) == 2
    assert "--models and --combination contradict" in capsys.readouterr().err
    import os

    os.environ["MLFLOW_TRACKING_URI"], before = f"http://127.0.0.1:{free_port()}", os.environ.get("MLFLOW_TRACKING_URI")
    try:
        assert main(["generate", "hi", "--combination", "models:/c@champion"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "unreachable" in err
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def test_pinned_backends_travel_through_the_registry(tiny_dirs, store, tmp_path, monkeypatch):
    """A run recorded under one backend policy; elsewhere $CHARED_BACKEND=llama_cpp could not even load the
    tiny HF members. Pyfunc, LangChain and a workflow variant all load them on the pinned transformers."""
    import json

    import mlflow

    from chared_flows.flow.llm import VariantLLM
    from chared_flows.flow.spec import combination_variant
    from chared_flows.integrations.langchain import CharEDLLM

    run_dir = write_run(tmp_path / "r1", tiny_dirs, backend="auto: transformers (no llama_cpp binding)")
    pinned = combination_from_run(run_dir, "mix")
    assert pinned.backends == ["transformers", "transformers"]
    promote(pinned, "pinned-combo", alias="champion")
    record = json.loads((run_dir / "records.jsonl").read_text().splitlines()[0])
    monkeypatch.setenv("CHARED_BACKEND", "llama_cpp")
    llm = CharEDLLM.from_registry("models:/pinned-combo@champion")
    assert llm.backends == ["transformers", "transformers"] and llm.invoke(PROMPT) == record["output"]
    assert mlflow.pyfunc.load_model("models:/pinned-combo@champion").predict([PROMPT]) == [record["output"]]
    variant = combination_variant("champion", "models:/pinned-combo@champion")
    assert variant.backends == ("transformers", "transformers")
    assert VariantLLM(variant).complete(PROMPT)[0] == record["output"]
    with pytest.raises(ConfigError, match="backend llama_cpp runs GGUF files"):  # unpinned: the env decides
        CharEDLLM(models=list(tiny_dirs)).invoke(PROMPT)
