"""PromptLayer's side: promotion publishes the template with a release label; routed calls are requests with scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from langchain_core.runnables import RunnableLambda

from chared_flows.combinations.live_promptlayer import PromptLayerRecorder
from chared_flows.combinations.router import LiveRouter
from tests.support.promptlayer_server import FakePromptLayer
from tests.unit.combinations.conftest import write_run

KEY = "pl-test-key"
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture()
def promptlayer(monkeypatch):
    with FakePromptLayer(api_key=KEY) as fake:
        monkeypatch.setenv("PROMPTLAYER_API_KEY", KEY)
        monkeypatch.setenv("PROMPTLAYER_BASE_URL", fake.url)
        yield fake


def test_promote_publishes_the_template_with_the_alias_as_release_label(tiny_dirs, tmp_path, store, promptlayer,
                                                                        monkeypatch, capsys):
    from chared_flows.cli import main
    from chared_flows.prompts import TemplateStore

    monkeypatch.chdir(tmp_path)
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    spec = TemplateStore(tmp_path / "templates").resolve("math_answer@1")
    run_dir = write_run(tmp_path / "runs" / "r1", tiny_dirs)
    data = json.loads((run_dir / "run.json").read_text())
    data["run"]["template_hash"] = spec.content_hash  # the run used exactly this template version
    (run_dir / "run.json").write_text(json.dumps(data))
    assert main(["promote", "r1", "mix", "--name", "pl-combo", "--alias", "champion"]) == 0
    assert "published with release label 'champion'" in capsys.readouterr().err
    (version,) = promptlayer.templates["math_answer"]
    assert version["release_labels"] == ["champion"]
    assert version["prompt_template"]["content"][0]["text"] == spec.template
    meta = version["metadata"]
    assert meta["chared_model_uri"] == "models:/pl-combo/1" and json.loads(meta["chared_combination"])["members"] == tiny_dirs


def test_routed_calls_are_promptlayer_requests_and_feedback_is_a_score(promptlayer):
    arms = {"champion": RunnableLambda(lambda x: "A"), "challenger": RunnableLambda(lambda x: "B")}
    live = LiveRouter("exp-pl", arms, {"champion": 0.5, "challenger": 0.5}, control="champion",
                      recorders=[PromptLayerRecorder()])
    live.invoke("hello", config={"configurable": {"user_id": "u-1"}})
    a = live.last_assignment()
    live.feedback(a.trace_id, "thumbs_up", 1)
    (logged,) = promptlayer.accepted_logs()
    assert logged["metadata"]["chared_arm"] == a.arm and logged["metadata"]["chared_experiment"] == "exp-pl"
    assert logged["output"]["content"][0]["text"] == ("A" if a.arm == "champion" else "B")
    (score,) = promptlayer.accepted_scores()
    assert score["request_id"] == a.trace_id and score["score"] == 100 and score["name"] == "thumbs_up"
