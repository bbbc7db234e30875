"""ChatCharED: the langchain-tests standard unit suite, plus message rendering on a fake ensemble."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_tests.unit_tests import ChatModelUnitTests

from chared_flows.errors import ConfigError
from chared_flows.integrations.langchain import ChatCharED, CharEDLLM, messages_to_chat
from tests.fixtures.tiny import scripted_member
from tests.unit.langchain.lc_fakes import script_for


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class TestChatCharEDStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatCharED]:
        return ChatCharED

    @property
    def chat_model_params(self) -> dict:
        return {"models": ["smollm2", "gemma3-270m"], "weights": [0.5, 0.5]}

    # Property declarations, not overrides: the members are plain causal LMs with no tool
    # calling and no structured-output mode.
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False


def test_chat_passes_system_and_user_as_chat_messages(fake_engine) -> None:
    chat = ChatCharED(models=["a", "b"], weights=[0.6, 0.4])
    reply = chat.invoke([SystemMessage("Be brief."), HumanMessage("2+3?")])
    assert isinstance(reply, AIMessage)
    assert fake_engine.calls[-1]["prompt"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"},
    ]  # each member renders the list with its own chat template
    assert reply.content == script_for(fake_engine.calls[-1]["prompt"], [0.6, 0.4], 0.0)
    assert reply.response_metadata["finish_reason"] == "eos"
    assert reply.response_metadata["model_name"] == "a+b"


def test_chat_standard_params_map_onto_chared_fields(fake_engine) -> None:
    chat = ChatCharED(models=["a"], max_tokens=12, stop=["\n"], timeout=30, max_retries=2)
    assert chat.max_new_chars == 12
    assert chat.invoke("hello").content == script_for(user("hello"), None, 0.0)[:12]
    with pytest.raises(Exception, match="bogus"):
        ChatCharED(bogus=True)


def test_chat_stream_and_timeout(fake_engine) -> None:
    chat = ChatCharED(models=["a"])
    chunks = [c.content for c in chat.stream("hi")]
    assert len([c for c in chunks if c]) > 3
    assert "".join(chunks) == script_for(user("hi"), None, 0.0)
    timed = ChatCharED(models=["a"], timeout=1e-9)
    reply = timed.invoke("hi")
    assert reply.response_metadata["finish_reason"] == "timeout"
    assert len(reply.content) < len(script_for(user("hi"), None, 0.0))


def test_multi_turn_conversation_keeps_every_turn_in_order(fake_engine) -> None:
    chat = ChatCharED(models=["a"])
    chat.invoke([SystemMessage("s"), HumanMessage("a"), AIMessage("b"), HumanMessage("c")])
    assert fake_engine.calls[-1]["prompt"] == [
        {"role": "system", "content": "s"}, {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
    ]


def test_tool_messages_and_assistant_only_chats_are_refused(fake_engine) -> None:
    chat = ChatCharED(models=["a"])
    with pytest.raises(ConfigError, match="message 1 is a 'tool' message"):
        chat.invoke([HumanMessage("a"), ToolMessage("42", tool_call_id="t1")])
    with pytest.raises(ConfigError, match="at least one user"):
        chat.invoke([SystemMessage("s"), AIMessage("b")])
    assert fake_engine.calls == []


def test_multi_turn_on_the_real_engine_renders_a_transcript_for_template_less_members() -> None:
    """Scripted members have no chat template: the engine renders a plain transcript."""
    members = [scripted_member("Fine.", name="m1"), scripted_member("Fine.", name="m2", kind="byte_fallback")]
    chat = ChatCharED(preloaded_members=members, weights=[0.5, 0.5], max_tokens=20, mode="chared")
    conversation = [SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello."), HumanMessage("How are you?")]
    assert chat.invoke(conversation).content == "Fine."
    rendered, _ = members[0].render(messages_to_chat(conversation))
    assert [line for line in rendered.splitlines() if line][:4] == [
        "System: Be brief.", "User: Hi", "Assistant: Hello.", "User: How are you?",
    ]
    assert "".join(c.content for c in chat.stream(conversation)) == "Fine."


def test_as_llm_keeps_every_parameter() -> None:
    chat = ChatCharED(models=["a", "b"], weights=[0.3, 0.7], temperature=0.4, seed=2, max_tokens=9)
    llm = chat.as_llm()
    assert isinstance(llm, CharEDLLM)
    assert llm._identifying_params == chat._identifying_params
    assert llm.chat is True


def test_api_key_is_accepted_ignored_and_never_serialised(fake_engine) -> None:
    chat = ChatCharED(models=["a"], api_key="sk-secret-123")
    assert chat.invoke("hi").content
    assert "sk-secret-123" not in repr(chat) and "sk-secret-123" not in str(chat.model_dump())
    assert "api_key" not in chat._identifying_params


def test_usage_metadata_sums_members_and_response_metadata_has_each(fake_engine) -> None:
    chat = ChatCharED(models=["a", "b"], weights=[0.5, 0.5])
    reply = chat.invoke("hi")
    assert reply.usage_metadata == {"input_tokens": 2 * 7, "output_tokens": 2 * 4, "total_tokens": 22}
    assert reply.response_metadata["token_usage"] == {
        "a": {"input_tokens": 7, "output_tokens": 4}, "b": {"input_tokens": 7, "output_tokens": 4},
    }
    chunks = list(chat.stream("hi"))
    assert [c.usage_metadata is not None for c in chunks].count(True) == 1  # summed when joined
    joined = chunks[0]
    for chunk in chunks[1:]:
        joined = joined + chunk
    assert joined.usage_metadata == reply.usage_metadata
    assert joined.response_metadata["model_name"] == "a+b"


def test_get_num_tokens_counts_with_the_first_members_tokenizer() -> None:
    from tests.fixtures.tiny import byte_fallback_tokenizer

    members = [scripted_member("x", name="m1", kind="byte_fallback"), scripted_member("x", name="m2")]
    chat = ChatCharED(preloaded_members=members)
    text = "The quick brown fox jumps over the lazy dog."
    expected = len(byte_fallback_tokenizer()(text, add_special_tokens=False)["input_ids"])
    assert chat.get_num_tokens(text) == expected > 0
    assert CharEDLLM(preloaded_members=members).get_num_tokens(text) == expected


def test_usage_metadata_on_the_real_engine_counts_each_members_tokens() -> None:
    members = [scripted_member("Fine.", name="m1"), scripted_member("Fine.", name="m2", kind="byte_fallback")]
    reply = ChatCharED(preloaded_members=members, weights=[0.5, 0.5], max_tokens=20).invoke("How are you?")
    usage, per_member = reply.usage_metadata, reply.response_metadata["token_usage"]
    assert set(per_member) == {"m1", "m2"}
    assert all(v["input_tokens"] > 0 and v["output_tokens"] > 0 for v in per_member.values())
    assert usage["input_tokens"] == sum(v["input_tokens"] for v in per_member.values())
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
