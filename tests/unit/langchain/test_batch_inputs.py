"""CharEDLLM.batch(..., return_exceptions=True): one bad input fails alone, the others decode."""

from __future__ import annotations

import asyncio

import pytest

from chared_flows.errors import ConfigError, ContextWindowError
from chared_flows.integrations.langchain import CharEDLLM
from tests.fixtures.tiny import scripted_member

SCRIPT = "The answer is 5."


@pytest.fixture(scope="module")
def llm():
    return CharEDLLM(preloaded_members=[scripted_member(SCRIPT, name="five")], max_new_chars=40)


BAD = {
    "surrogate": ("Q: ab\ud800cd", ConfigError, "lone surrogate"),
    "too long": ("x" * 5000, ContextWindowError, "context window"),  # the member's window is 4096 tokens
    "not a prompt": (42, ValueError, "Invalid input type"),
}


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("asynchronous", [False, True])
def test_one_bad_input_fails_alone(llm, kind, asynchronous):
    bad, error, message = BAD[kind]
    inputs = ["Q: 2+3=", bad, "Q: 1+4="]
    if asynchronous:
        out = asyncio.run(llm.abatch(inputs, return_exceptions=True))
    else:
        out = llm.batch(inputs, return_exceptions=True)
    assert out[0] == SCRIPT and out[2] == SCRIPT
    assert isinstance(out[1], error) and message in str(out[1])


def test_without_return_exceptions_the_bad_input_still_raises(llm):
    with pytest.raises(ConfigError, match="lone surrogate"):
        llm.batch(["Q: fine", "Q: \udcff"])
