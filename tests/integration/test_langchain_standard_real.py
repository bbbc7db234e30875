"""LangChain's standard chat-model integration suite on the two embedded models (slow).

Unmodified: every skip below comes from the suite's own property declarations, each
stating a fact about CharED. `max_tokens` (CharED: characters) is kept small through the
suite's own `chat_model_params`, so each call decodes at most 16 characters.
"""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from chared_flows.integrations.langchain import ChatCharED

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def embedded_models():
    from chared_flows.decoding import Member

    try:  # loaded once; ChatCharED's own loads then share these weights
        return [Member.load("smollm2"), Member.load("gemma3-270m")]
    except Exception as exc:  # the embedded model packages are an optional extra
        pytest.skip(f"embedded models unavailable: {exc}")


class TestChatCharEDIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatCharED]:
        return ChatCharED

    @property
    def chat_model_params(self) -> dict:
        return {"models": ["smollm2", "gemma3-270m"], "weights": [0.5, 0.5], "max_tokens": 16}

    # The members are plain causal LMs: no tool calling, no structured-output or JSON mode,
    # text only (no image, audio or PDF inputs).
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True  # every member's prompt and output tokens, summed (per member in response_metadata)
