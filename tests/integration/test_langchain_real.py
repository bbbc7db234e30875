"""A real chain on the embedded models (slow: loads SmolLM2-135M and Gemma-3-270M).

Run with: python -m pytest -m integration tests/integration/test_langchain_real.py
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def members():
    from chared_flows.decoding import Member

    try:
        return [Member.load("smollm2"), Member.load("gemma3-270m")]
    except Exception as exc:  # the embedded model packages are an optional extra
        pytest.skip(f"embedded models unavailable: {exc}")


def test_prompt_llm_parser_chain_on_real_models(members) -> None:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import PromptTemplate

    from chared_flows.integrations.langchain import CharEDLLM

    llm = CharEDLLM(preloaded_members=members, weights=[0.5, 0.5], max_new_chars=24, stop=["\n\n"])
    chain = PromptTemplate.from_template("Q: {q}\nA:") | llm | StrOutputParser()
    text = chain.invoke({"q": "What is 2+3?"})
    assert isinstance(text, str) and 0 < len(text) <= 24 and "\n\n" not in text
    streamed = "".join(chain.stream({"q": "What is 2+3?"}))
    assert streamed == text  # greedy: the stream and invoke decode the same text
    assert chain.batch([{"q": "Name a color."}, {"q": "What is 2+3?"}])[1] == text


def test_chat_model_on_real_models(members) -> None:
    from chared_flows.integrations.langchain import ChatCharED

    chat = ChatCharED(preloaded_members=members, weights=[0.5, 0.5], max_tokens=16)
    reply = chat.invoke("Say hello.")
    assert reply.content and reply.response_metadata["finish_reason"] in {"stop", "eos", "length"}
