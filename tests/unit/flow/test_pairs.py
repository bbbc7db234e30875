"""Where pairs run: the actor plan (which variants each Ray actor serves) and the local executor."""

from __future__ import annotations

import pickle

from chared_flows.flow.pairs import PairRunner, plan_actors
from chared_flows.records import VariantSpec


def variants(**members: str) -> list[VariantSpec]:
    return [VariantSpec(name, tuple(spec.split("+"))) for name, spec in members.items()]


def test_variants_sharing_a_member_stay_on_one_actor_and_spare_actors_replicate_the_busiest_group() -> None:
    vs = variants(small="a", big="b", both="a+b", other="c")
    pairs = {"small": 10, "big": 10, "both": 10, "other": 10}
    # a, b and both share members: one group of 30 pairs; c: one group of 10
    assert plan_actors(vs, pairs, 1) == [["small", "big", "both", "other"]]
    assert plan_actors(vs, pairs, 2) == [["small", "big", "both"], ["other"]]
    assert plan_actors(vs, pairs, 3) == [["small", "big", "both"], ["small", "big", "both"], ["other"]]
    assert plan_actors(vs, pairs, 6) == [["small", "big", "both"]] * 4 + [["other"]] * 2  # 7.5 and 5 pairs each


def test_fewer_actors_than_groups_deal_the_largest_groups_first() -> None:
    vs = variants(a="a", b="b", c="c")
    assert plan_actors(vs, {"a": 1, "b": 5, "c": 3}, 2) == [["b"], ["a", "c"]]
    # nothing left to do (a finished run): every variant still has an actor, for its families
    assert sorted(n for w in plan_actors(vs, {}, 2) for n in w) == ["a", "b", "c"]


class _Workflow:
    """Stands in for a ResolvedWorkflow (which pickles the same way: plain data and functions)."""

    scorers: list = []


def _no_llm(variant):
    raise AssertionError("not called: pickling must not build chains")


def test_a_pair_runner_pickles_without_its_loaded_llms() -> None:
    runner = PairRunner(_Workflow(), {"run_id": "r"}, _no_llm)
    runner._llms["x"] = "an llm"  # as after a load in this process
    copy = pickle.loads(pickle.dumps(runner))
    assert copy._llms == {} and copy.identity == {"run_id": "r"} and copy.llm_factory is _no_llm
    assert isinstance(copy.workflow, _Workflow)
