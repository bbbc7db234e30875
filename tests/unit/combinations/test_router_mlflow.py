"""The LiveRouter against a real local MLflow store: assignments on traces, feedback, the live report."""

from __future__ import annotations

import pytest
from langchain_core.runnables import RunnableLambda

from chared_flows.combinations.guard import Guard
from chared_flows.combinations.live_mlflow import MlflowRecorder, observations
from chared_flows.combinations.live_stats import Observation, live_report
from chared_flows.combinations.router import LiveRouter
from chared_flows.errors import ConfigError


def router(store, **options):
    arms = {"champion": RunnableLambda(lambda x: f"A:{x}"), "challenger": RunnableLambda(lambda x: f"B:{x}")}
    return LiveRouter("exp-1", arms, {"champion": 0.5, "challenger": 0.5}, control="champion",
                      versions={"champion": "models:/c@champion (version 1)"},
                      recorders=[MlflowRecorder(store)], **options)


def test_calls_are_routed_sticky_and_their_traces_carry_the_assignment(store):
    import mlflow

    live = router(store)
    seen = {}
    for user in ["u1", "u2", "u3", "u4", "u1", "u2"]:
        out = live.invoke("hi", config={"configurable": {"user_id": user}})
        assignment = live.last_assignment()
        assert out == ("A:hi" if assignment.arm == "champion" else "B:hi")
        assert seen.setdefault(user, assignment.arm) == assignment.arm  # sticky
        trace = mlflow.get_trace(assignment.trace_id)
        assert trace.info.tags["chared.live.arm"] == assignment.arm
        assert trace.info.tags["chared.live.experiment"] == "exp-1"
        if assignment.arm == "champion":
            assert trace.info.tags["chared.live.version"] == "models:/c@champion (version 1)"
    assert live.invoke("x", config={"metadata": {"user_id": "u1"}}) == live.invoke("x", config={"configurable": {"user_id": "u1"}})
    with pytest.raises(ConfigError, match="no routing key 'user_id'"):
        live.invoke("hi")
    with pytest.raises(ConfigError, match="routing key '' is empty"):
        live.invoke("hi", config={"configurable": {"user_id": ""}})


def test_feedback_becomes_the_live_report(store):
    live = router(store)
    expected = []
    for i in range(16):
        live.invoke("q", config={"configurable": {"user_id": f"user-{i}"}})
        a = live.last_assignment()
        stars = float(i % 5) + (1.0 if a.arm == "challenger" else 0.0)
        live.feedback(a.trace_id, "stars", stars)
        live.feedback(a.trace_id, "thumbs_up", i % 2 == 0)
        expected += [Observation(a.arm, "stars", stars, a.version), Observation(a.arm, "thumbs_up", float(i % 2 == 0), a.version)]
    found, n, control = observations("exp-1", tracking_uri=store)
    assert n == 16 and control == "champion"
    key = lambda o: (o.arm, o.metric, o.value)  # noqa: E731
    assert sorted(found, key=key) == sorted(expected, key=key)
    got, want = live_report("exp-1", found, "champion").to_dict(), live_report("exp-1", expected, "champion").to_dict()
    assert len(got["comparisons"]) == 2
    for section in ("arms", "comparisons"):  # the same numbers, up to the order of summation
        for a, b in zip(got[section], want[section]):
            assert {k: v for k, v in a.items() if not isinstance(v, float)} == \
                {k: v for k, v in b.items() if not isinstance(v, float)}
            assert [v for v in a.values() if isinstance(v, float)] == \
                pytest.approx([v for v in b.values() if isinstance(v, float)], nan_ok=True)
    with pytest.raises(ConfigError, match="no MLflow trace 'tr-nope'"):
        live.feedback("tr-nope", "stars", 1.0)


def test_a_guard_sends_all_traffic_back_to_control_when_the_challenger_is_worse(store):
    import mlflow

    live = router(store, guard=Guard("champion", "challenger", tau=0.5, min_samples=5), guard_metric="ok")
    users = [f"user-{i}" for i in range(200)]
    for user in users:
        if live.stopped:
            break
        live.invoke("q", config={"configurable": {"user_id": user}})
        a = live.last_assignment()
        live.feedback(a.trace_id, "ok", 1.0 if a.arm == "champion" else 0.0)
    assert live.stopped and live.stopped["challenger"] == "challenger" and live.stopped["difference"] < 0
    after = users[:20]
    assert {live.split.arm_of(u) for u in after} == {"champion", "challenger"}  # the split alone would use both
    for user in after:
        live.invoke("q", config={"configurable": {"user_id": user}})
        assert live.last_assignment().arm == "champion"
    tags = mlflow.MlflowClient(store).get_experiment("0").tags
    assert "guard stopped the rollout" in tags["chared.live.exp-1.event"]


def test_cli_live_report_prints_the_same_numbers(store, capsys, tmp_path):
    import json

    from chared_flows.cli import main
    from chared_flows.combinations.live import feedback, parse_since

    live = router(store)
    for i in range(8):
        live.invoke("q", config={"configurable": {"user_id": f"user-{i}"}})
        feedback(live.last_assignment().trace_id, "stars", float(i % 4))
    assert main(["ab", "--live", "exp-1", "--report-dir", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "live A/B exp-1 (control: champion)" in out
    found, _, _ = observations("exp-1", tracking_uri=store)
    want = live_report("exp-1", found, "champion").to_dict()
    got = json.loads((tmp_path / "rep" / "live.json").read_text())
    assert got["comparisons"][0]["p"] == pytest.approx(want["comparisons"][0]["p"])
    assert main(["ab", "--live", "nope"]) == 2
    assert "no traces of live experiment 'nope'" in capsys.readouterr().err
    assert main(["ab", "--live", "exp-1", "--since", "yesterday"]) == 2
    assert "--since 'yesterday' is neither" in capsys.readouterr().err
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert main(["ab", "--live", "exp-1", "--since", "2999-01-01T00:00"]) == 2  # nothing that recent


def test_router_from_registry_routes_to_registered_versions(tiny_dirs, tmp_path, store):
    import mlflow

    from chared_flows.combinations.evidence import combination_from_run
    from chared_flows.combinations.registry import promote
    from tests.unit.combinations.conftest import PROMPT, write_run

    combo = combination_from_run(write_run(tmp_path / "r1", tiny_dirs), "mix")
    promote(combo, "live-combo", alias="champion")
    challenger = combo.model_copy(update={"decoding": combo.decoding.replace(weights=[0.2, 0.8])})
    promote(challenger, "live-combo", alias="challenger")
    live = LiveRouter.from_registry(
        "exp-reg", {"champion": ("models:/live-combo@champion", 0.5), "challenger": ("models:/live-combo@challenger", 0.5)},
        control="champion", tracking_uri=store)
    arms = set()
    for user in ("u1", "u2", "u3", "u4", "u5", "u6"):
        text = live.invoke(PROMPT, config={"configurable": {"user_id": user}})
        a = live.last_assignment()
        arms.add(a.arm)
        assert isinstance(text, str)
        version = {"champion": "1", "challenger": "2"}[a.arm]
        assert mlflow.get_trace(a.trace_id).info.tags["chared.live.version"] == \
            f"models:/live-combo@{a.arm} (version {version})"
    assert arms == {"champion", "challenger"}
