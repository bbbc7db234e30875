"""A scriptable fake ensemble, so the LangChain surface is tested without torch models.

The fake replaces the two seams of chared_flows.integrations.langchain (_load_member and
_build_ensemble). It spells out a script chosen by the prompt, honours stop strings and
max_new_chars like the engine, and records every call so tests can check what was passed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

import chared_flows.integrations.langchain as lc


@dataclass(frozen=True)
class FakeMember:
    name: str
    chat: bool = False

    def with_chat(self, chat: bool) -> "FakeMember":
        return FakeMember(self.name, chat)


@dataclass
class Recorder:
    calls: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    loads: list[tuple[str, bool]] = field(default_factory=list)


def script_for(prompt: str, weights: list[float] | None, temperature: float) -> str:
    """Deterministic output that shows which prompt, weights and temperature were used."""
    if not isinstance(prompt, str):  # chat messages: shown as "role: content" turns
        prompt = " / ".join(f"{m['role']}: {m['content']}" for m in prompt)
    w = "uniform" if weights is None else "/".join(f"{x:g}" for x in weights)
    return f"[{prompt}|w={w}|t={temperature:g}] The answer is 5.\nQ: next"


class FakeEnsemble:
    def __init__(self, members, config, recorder: Recorder):
        self.members, self.config = members, config
        self.weights = None if config.weights is None else list(config.weights)
        self.mode, self.rule = config.mode, config.rule
        self.recorder = recorder

    def describe(self) -> dict:
        return {"members": [m.name for m in self.members], "weights": self.weights, "mode": self.mode, "rule": self.rule}

    def _decide(self, prompt, max_new_chars, temperature, top_p, seed, stop):
        with self.recorder.lock:
            self.recorder.calls.append(
                dict(prompt=prompt, max_new_chars=max_new_chars, temperature=temperature, top_p=top_p,
                     seed=seed, stop=stop, weights=self.weights, chat=[m.chat for m in self.members])
            )
        text = script_for(prompt, self.weights, temperature)
        reason = "eos"
        if len(text) > max_new_chars:
            text, reason = text[:max_new_chars], "length"
        cuts = [text.find(s) for s in (stop or []) if s in text]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
        return text, reason

    def _result(self, text: str, reason: str):
        stats = SimpleNamespace(
            wall_time_s=0.01, chars=len(text), forward_passes={m.name: 3 for m in self.members},
            tokens_fed={m.name: 9 for m in self.members}, total_forward_passes=3 * len(self.members),
            prompt_tokens={m.name: 7 for m in self.members}, output_tokens={m.name: 4 for m in self.members},
        )
        return SimpleNamespace(text=text, finish_reason=reason, rounds=[text[:4], text[4:]], stats=stats)

    def generate(self, prompt, max_new_chars=256, temperature=0.0, top_p=1.0, seed=None, stop=None):
        return self._result(*self._decide(prompt, max_new_chars, temperature, top_p, seed, stop))

    def generate_batch(self, prompts, **kwargs):
        return [self.generate(p, **kwargs) for p in prompts]

    def start_stream(self, prompt, max_new_chars=256, temperature=0.0, top_p=1.0, seed=None, stop=None):
        text, reason = self._decide(prompt, max_new_chars, temperature, top_p, seed, stop)
        ensemble = self

        class Streaming:
            result = None

            def __iter__(self):
                for i in range(0, len(text), 3):  # chunks of 3 characters, like rounds
                    yield text[i : i + 3]
                self.result = ensemble._result(text, reason)

        return Streaming()


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()

    def load(spec: str, chat: bool, device: str = "cpu", **_) -> FakeMember:
        recorder.loads.append((spec, chat))
        return FakeMember(spec, chat)

    monkeypatch.setattr(lc, "_load_member", load)
    monkeypatch.setattr(lc, "_build_ensemble", lambda members, config: FakeEnsemble(members, config, recorder))
    return recorder
