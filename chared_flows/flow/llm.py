"""A variant's model as the workflow runner calls it: `complete(prompt)` -> (text, generation info).

Plain engine calls, no LangChain: a `chared run` needs only the engine. The runner takes
any object of this shape from its `llm_factory` (a LangChain `CharEDLLM` has it too), and
reads `tokenizer_families()` (for the records) and `loaded_members()` (for scorers that
read the model, such as bits per character) when the object has them.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from chared_flows.decoding import DecodeConfig, Ensemble, Member, generation_info, pinned_arguments
from chared_flows.records import VariantSpec


class PairLLM(Protocol):
    def complete(self, prompt: str) -> tuple[str, dict[str, Any]]: ...


class VariantLLM:
    """The variant's members (loaded on first use, shared process-wide) and its decoding parameters."""

    def __init__(self, variant: VariantSpec, device: str = "cpu"):
        decoding = dict(variant.decoding)
        self.chat = bool(decoding.pop("chat", False))
        self.device = device
        self.specs = list(variant.members)
        self.pins = list(variant.backends)  # a registered combination's backends (empty: unpinned)
        self.where = variant.combination or f"variant {variant.name!r}"
        # The variant was checked when the workflow was read; this builds the engine's object.
        ensemble = {"weights": variant.weights, "mode": variant.mode, "rule": variant.rule}
        self.config = DecodeConfig.build(**{k: v for k, v in ensemble.items() if v is not None}, **decoding)
        self._members: list[Member] | None = None
        self._lock = threading.Lock()

    def loaded_members(self) -> list[Member]:
        with self._lock:
            if self._members is None:
                backends = pinned_arguments(self.specs, self.pins, self.where)
                self._members = [Member.load(spec, chat=self.chat, device=self.device, backend=backend)
                                 for spec, backend in zip(self.specs, backends)]
            return list(self._members)

    def tokenizer_families(self) -> list[str]:
        """Each member's tokenizer family, e.g. ["byte_level", "sentencepiece"] (loads them)."""
        return [str(m.family) for m in self.loaded_members()]

    def complete(self, prompt: str) -> tuple[str, dict[str, Any]]:
        result = Ensemble(self.loaded_members(), self.config).generate(prompt)
        return result.text, generation_info(result)
