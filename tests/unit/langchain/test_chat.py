"""ChatCharED: the langchain-tests standard unit suite, plus message rendering on a fake ensemble."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_tests.unit_tests import ChatModelUnitTests

from chared_flows.errors import ConfigError
from chared_flows.integrations.langchain import ChatCharED, CharEDLLM
from tests.unit.langchain.lc_fakes import script_for


class TestChatCharEDStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatCharED]:
        return ChatCharED

    @property
    def chat_model_params(self) -> dict:
        return {"models": ["smollm2", "gemma3-270m"], "weights": [0.5, 0.5]}

    @property
    def standard_chat_model_params(self) -> dict:
        # CharED decodes local models: there is no API key to pass. (langchain-ollama's
        # standard tests skip the API-key case for the same reason.) Every other standard
        # parameter (temperature, max_tokens, timeout, stop, max_retries) is kept.
        params = dict(super().standard_chat_model_params)
        params.pop("api_key", None)
        return params

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False


def test_chat_renders_system_and_user_as_one_chat_turn(fake_engine) -> None:
    chat = ChatCharED(models=["a", "b"], weights=[0.6, 0.4])
    reply = chat.invoke([SystemMessage("Be brief."), HumanMessage("2+3?")])
    assert isinstance(reply, AIMessage)
    assert reply.content == script_for("Be brief.\n\n2+3?", [0.6, 0.4], 0.0)
    assert fake_engine.calls[-1]["chat"] == [True, True]  # each member applies its chat template
    assert reply.response_metadata["finish_reason"] == "eos"
    assert reply.response_metadata["model_name"] == "a+b"


def test_chat_standard_params_map_onto_chared_fields(fake_engine) -> None:
    chat = ChatCharED(models=["a"], max_tokens=12, stop=["\n"], timeout=30, max_retries=2)
    assert chat.max_new_chars == 12
    assert chat.invoke("hello").content == script_for("hello", None, 0.0)[:12]
    with pytest.raises(Exception, match="bogus"):
        ChatCharED(bogus=True)


def test_chat_stream_and_timeout(fake_engine) -> None:
    chat = ChatCharED(models=["a"])
    chunks = [c.content for c in chat.stream("hi")]
    assert len([c for c in chunks if c]) > 3
    assert "".join(chunks) == script_for("hi", None, 0.0)
    timed = ChatCharED(models=["a"], timeout=1e-9)
    reply = timed.invoke("hi")
    assert reply.response_metadata["finish_reason"] == "timeout"
    assert len(reply.content) < len(script_for("hi", None, 0.0))


def test_multi_turn_is_refused_clearly_until_the_engine_renders_it(fake_engine) -> None:
    chat = ChatCharED(models=["a"])
    with pytest.raises(ConfigError, match="multi-turn"):
        chat.invoke([HumanMessage("a"), AIMessage("b"), HumanMessage("c")])


def test_as_llm_keeps_every_parameter() -> None:
    chat = ChatCharED(models=["a", "b"], weights=[0.3, 0.7], temperature=0.4, seed=2, max_tokens=9)
    llm = chat.as_llm()
    assert isinstance(llm, CharEDLLM)
    assert llm._identifying_params == chat._identifying_params
    assert llm.chat is True
