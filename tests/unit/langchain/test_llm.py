"""CharEDLLM on a fake ensemble: invoke, stream + callbacks, batch, async, stop, configurable fields."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import ConfigurableField
from pydantic import ValidationError

from chared_flows.errors import ConfigError
from chared_flows.integrations.langchain import CharEDLLM, merge_stops

from tests.unit.langchain.lc_fakes import script_for


class TokenCollector(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.ended = 0

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)

    def on_llm_end(self, response, **kwargs: Any) -> None:
        self.ended += 1


class AsyncTokenCollector(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_unknown_field_is_rejected_not_dropped() -> None:
    with pytest.raises(ValidationError, match="bogus"):
        CharEDLLM(bogus=1)
    with pytest.raises(ValidationError, match="wieghts"):
        CharEDLLM(wieghts=[0.5, 0.5])


def test_bad_values_are_rejected() -> None:
    with pytest.raises(ValidationError):
        CharEDLLM(weights=[-1.0, 2.0])
    with pytest.raises(ValidationError):
        CharEDLLM(top_p=0.0)
    with pytest.raises(ValidationError):
        CharEDLLM(models=[])


def test_invoke_decodes_with_configured_params(fake_engine) -> None:
    llm = CharEDLLM(models=["a", "b"], weights=[0.7, 0.3], temperature=0.0, max_new_chars=500)
    assert llm.invoke("hi") == script_for("hi", [0.7, 0.3], 0.0)
    call = fake_engine.calls[-1]
    assert call["max_new_chars"] == 500 and call["stop"] is None and call["chat"] == [False, False]
    assert fake_engine.loads == [("a", False), ("b", False)]  # lazily, on the first call


def test_members_are_loaded_lazily(fake_engine) -> None:
    CharEDLLM(models=["a", "b"])
    assert fake_engine.loads == []


def test_weight_count_mismatch_fails_when_the_llm_is_built(fake_engine) -> None:
    with pytest.raises(ValidationError, match="3 weights for 2 members"):
        CharEDLLM(models=["a", "b"], weights=[0.2, 0.3, 0.5])
    assert fake_engine.loads == []  # refused before any model loads


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(mode="exaact"), r"mode\s+Input should be 'chared' or 'exact'"),
        (dict(beam_width=0), r"beam_width\s+Input should be greater than or equal to 1"),
        (dict(prune_threshold=1.5), r"prune_threshold\s+Input should be less than 1"),
        (dict(token_healing="yes"), r"token_healing\s+Input should be a valid boolean"),
        (dict(max_new_chars=10**7), r"max_new_chars\s+Input should be less than or equal to 32768"),
    ],
)
def test_every_decoding_knob_is_a_field_checked_by_the_engine(fields, message) -> None:
    with pytest.raises(ValidationError, match=message):
        CharEDLLM(models=["a", "b"], **fields)


def test_exact_mode_knobs_reach_the_engine(fake_engine) -> None:
    llm = CharEDLLM(models=["a", "b"], mode="exact", beam_width=3, prune_threshold=0.01, token_healing=False)
    llm.invoke("x")
    assert llm.identifying_params()["beam_width"] == 3


@pytest.mark.parametrize(
    "weights, message", [([float("nan"), 1.0], "weight 0 must be finite, not nan"), ([-1, 2], "weight 0 is -1"), ([0, 0], "all zero")]
)
def test_bad_weights_are_refused_when_the_llm_is_built(weights, message) -> None:
    with pytest.raises(ValueError, match=message):
        CharEDLLM(models=["a", "b"], weights=weights)


def test_call_stop_is_merged_with_configured_stop(fake_engine) -> None:
    llm = CharEDLLM(models=["a"], stop=["\nQ:"])
    assert llm.invoke("p") == "[p|w=uniform|t=0] The answer is 5."
    assert fake_engine.calls[-1]["stop"] == ["\nQ:"]
    assert llm.invoke("p", stop=["answer", "\nQ:"]) == "[p|w=uniform|t=0] The "
    assert fake_engine.calls[-1]["stop"] == ["\nQ:", "answer"]
    assert merge_stops(None, None) is None
    assert merge_stops(["a"], ["b", "a"]) == ["a", "b"]


def test_call_time_overrides_and_unknown_call_options(fake_engine) -> None:
    llm = CharEDLLM(models=["a"])
    assert llm.invoke("p", temperature=0.5, seed=3).startswith("[p|w=uniform|t=0.5]")
    assert fake_engine.calls[-1]["seed"] == 3
    with pytest.raises(ConfigError, match="unknown call-time option"):
        llm.invoke("p", temprature=0.5)


def test_stream_yields_chunks_and_callbacks_see_every_one(fake_engine) -> None:
    llm = CharEDLLM(models=["a", "b"])
    collector = TokenCollector()
    chunks = list(llm.stream("s", config={"callbacks": [collector]}))
    expected = script_for("s", None, 0.0)
    assert len([c for c in chunks if c]) > 3  # really streamed, not one blob
    assert "".join(chunks) == expected
    assert collector.tokens == [c for c in chunks if c]
    assert collector.ended == 1


def test_invoke_with_a_listener_streams_tokens_and_keeps_generation_info(fake_engine) -> None:
    llm = CharEDLLM(models=["a", "b"], max_new_chars=10)
    collector = TokenCollector()
    result = llm.generate(["p"], callbacks=[collector])
    generation = result.generations[0][0]
    assert generation.text == script_for("p", None, 0.0)[:10]
    assert "".join(collector.tokens) == generation.text
    assert generation.generation_info["finish_reason"] == "length"
    assert generation.generation_info["total_forward_passes"] == 6
    assert generation.generation_info["forward_passes"] == {"a": 3, "b": 3}


def test_generate_without_listener_reports_engine_info(fake_engine) -> None:
    result = CharEDLLM(models=["a"], stop=["\n"]).generate(["p", "q"])
    assert [g[0].text for g in result.generations] == [
        script_for("p", None, 0.0).split("\n")[0],
        script_for("q", None, 0.0).split("\n")[0],
    ]
    assert result.generations[0][0].generation_info["finish_reason"] == "stop"


def test_batch_keeps_order_and_runs_concurrently(fake_engine) -> None:
    llm = CharEDLLM(models=["a", "b"])
    prompts = [f"p{i}" for i in range(8)]
    outputs = llm.batch(prompts, config={"max_concurrency": 4})
    assert outputs == [script_for(p, None, 0.0) for p in prompts]
    assert len(fake_engine.calls) == 8


def test_ainvoke_and_astream_with_async_callbacks(fake_engine) -> None:
    llm = CharEDLLM(models=["a"], temperature=0.2)
    collector = AsyncTokenCollector()

    async def run() -> tuple[str, list[str]]:
        text = await llm.ainvoke("x")
        chunks = [c async for c in llm.astream("y", config={"callbacks": [collector]})]
        return text, chunks

    text, chunks = asyncio.run(run())
    assert text == script_for("x", None, 0.2)
    assert "".join(chunks) == script_for("y", None, 0.2)
    assert collector.tokens == [c for c in chunks if c] and len(collector.tokens) > 3


def test_configurable_weights_and_temperature(fake_engine) -> None:
    llm = CharEDLLM(models=["a", "b"], weights=[0.5, 0.5]).configurable_fields(
        weights=ConfigurableField(id="weights"),
        temperature=ConfigurableField(id="temperature"),
    )
    assert llm.invoke("p") == script_for("p", [0.5, 0.5], 0.0)
    tuned = llm.with_config(configurable={"weights": [0.9, 0.1], "temperature": 0.7})
    assert tuned.invoke("p") == script_for("p", [0.9, 0.1], 0.7)
    assert llm.invoke("p") == script_for("p", [0.5, 0.5], 0.0)  # the original is unchanged


def test_identifying_params_hold_everything_that_changes_output() -> None:
    llm = CharEDLLM(models=["a", "b"], weights=[0.6, 0.4], mode="chared", rule="mixture",
                    max_new_chars=7, temperature=0.3, top_p=0.9, seed=11, stop=["\n"], chat=True)
    params = llm._identifying_params
    assert params == {
        "models": ["a", "b"], "weights": [0.6, 0.4], "mode": "chared", "rule": "mixture", "chat": True,
        "max_new_chars": 7, "temperature": 0.3, "top_p": 0.9, "seed": 11, "stop": ["\n"],
        "beam_width": 8, "prune_threshold": 0.001, "token_healing": True,
    }
    assert llm._llm_type == "chared"
    # the LLM cache key differs when any of them differs
    other = CharEDLLM(models=["a", "b"], weights=[0.5, 0.5])
    assert llm.asdict() != other.asdict() and llm.asdict()["weights"] == [0.6, 0.4]


def test_preloaded_members_are_used_and_named(fake_engine) -> None:
    from tests.unit.langchain.lc_fakes import FakeMember

    llm = CharEDLLM(preloaded_members=[FakeMember("x"), FakeMember("y", chat=True)])
    assert llm._identifying_params["models"] == ["x", "y"]
    llm.invoke("p")
    assert fake_engine.loads == []
    assert fake_engine.calls[-1]["chat"] == [False, True]  # chat=None keeps their own setting
    CharEDLLM(preloaded_members=[FakeMember("x")], chat=True).invoke("p")
    assert fake_engine.calls[-1]["chat"] == [True]


def test_prompt_llm_parser_chain_with_invoke_stream_batch_ainvoke(fake_engine) -> None:
    chain = PromptTemplate.from_template("Q: {q}\nA:") | CharEDLLM(models=["a"], stop=["\nQ:"]) | StrOutputParser()
    expected = lambda q: script_for(f"Q: {q}\nA:", None, 0.0).split("\nQ:")[0]  # noqa: E731
    assert chain.invoke({"q": "2+3"}) == expected("2+3")
    chunks = list(chain.stream({"q": "1"}))
    assert len(chunks) > 1 and "".join(chunks) == expected("1")
    assert chain.batch([{"q": "a"}, {"q": "b"}]) == [expected("a"), expected("b")]
    assert asyncio.run(chain.ainvoke({"q": "z"})) == expected("z")


def test_real_engine_stream_equals_invoke_and_never_shows_the_stop_string() -> None:
    from tests.fixtures.tiny import scripted_member

    llm = CharEDLLM(preloaded_members=[scripted_member("The answer is 5.\nQ: next", name="s")], stop=["\nQ:"])
    collector = TokenCollector()
    chunks = list(llm.stream("Q: 2+3\nA:", config={"callbacks": [collector]}))
    assert llm.invoke("Q: 2+3\nA:") == "".join(chunks) == "The answer is 5."
    assert "".join(collector.tokens) == "The answer is 5."
    info = llm.generate(["x"]).generations[0][0].generation_info
    assert info["finish_reason"] == "stop" and info["forward_passes"] == {"s": info["total_forward_passes"]}


def test_batch_decodes_the_prompts_together_with_the_same_texts() -> None:
    """LangChain's batch -> one generate_batch: the members' passes run batched, texts as invoke's."""
    from chared_flows.decoding.backends.scheduler import scheduler_for
    from tests.fixtures.tiny import tiny_member

    members = [tiny_member("byte_level", 0), tiny_member("byte_fallback", 1)]
    llm = CharEDLLM(preloaded_members=members, max_new_chars=12, mode="chared")
    prompts = ["Tom has", "def add(a, b):", "Café", "Question: 12 + 30?"]
    alone = [llm.invoke(p) for p in prompts]
    scheduler = scheduler_for(members[0].assets.backend)
    batches, passes = scheduler.batches, scheduler.passes
    assert llm.batch(prompts) == alone
    assert scheduler.batches - batches < scheduler.passes - passes  # some passes shared a forward


def test_bad_backends_are_refused_when_the_llm_is_built(fake_engine) -> None:
    with pytest.raises(ValidationError, match="1 backends for 2 members"):
        CharEDLLM(models=["a", "b"], backends=["transformers"])
    with pytest.raises(ValidationError, match="backend 'cuda' of member 'b' is not one of transformers, llama_cpp, served"):
        CharEDLLM(models=["a", "b"], backends=["transformers", "cuda"])
    assert fake_engine.loads == []  # refused before any model loads
    assert CharEDLLM(models=["a", "b"], backends=["transformers", "llama_cpp"])._identifying_params["backends"] == [
        "transformers", "llama_cpp"]
