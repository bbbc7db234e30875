"""A member of an ensemble: tokenizer + byte vocabulary + a model runner, and its per-text session."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch

from chared_flows.decoding.ahead import AheadPasses
from chared_flows.decoding.backends.assets import MemberAssets, assets_for_model
from chared_flows.decoding.backends.loading import load_assets
from chared_flows.decoding.backends.protocol import PassCounts
from chared_flows.decoding.rounds import MemberRound
from chared_flows.decoding.backends.scheduler import PassScheduler, gather, scheduler_for
from chared_flows.decoding.text import check_prompt
from chared_flows.decoding.token_track import TokenTrack
from chared_flows.errors import ConfigError

__all__ = ["Member", "MemberAssets", "MemberSession", "Prompt", "assets_for_model"]


Prompt = Union[str, Sequence[Mapping[str, str]]]
_ROLES = ("system", "user", "assistant")


def _as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A prompt as chat messages, checked: a str is one user turn."""
    check_prompt(prompt)  # text.py decides what text is acceptable
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = []
    for i, message in enumerate(prompt):
        if not isinstance(message, Mapping):
            raise ConfigError(f"message {i} is a {type(message).__name__}; each message is a dict with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in _ROLES or not isinstance(content, str):
            raise ConfigError(
                f"message {i} is {dict(message)!r}; each message needs a role in {_ROLES} and str content"
            )
        messages.append({"role": role, "content": content})
    if not messages:
        raise ConfigError("the message list is empty; give at least one user message")
    return messages


@dataclass(frozen=True)
class Member:
    """One model in an ensemble. Cheap to copy; the assets are shared."""

    assets: MemberAssets
    chat: bool = False

    @classmethod
    def load(
        cls, spec: str, *, chat: bool = False, cache_dir: str | None = None, dtype: str = "float32",
        device: str = "cpu", backend: str | None = None,
    ) -> "Member":
        """Load an embedded alias, a local HF directory, a .gguf file or a hub id (shared per process).

        Prefix `llama_cpp:` (llama.cpp in process) or write `served:URL?tokenizer=SPEC` (an
        inference server) for the other backends: see decoding/backends/specs.py.

        device: "cpu" (default), "cuda", "cuda:N", "mps" or "auto"; members of one ensemble
        may sit on different devices (each pass runs on its member's device, and only the
        sorted next-token probabilities come back to the host).

        backend: for a plain spec, "auto" (GGUF models through llama.cpp where the binding is
        installed, else transformers), "transformers" or "llama_cpp"; default $CHARED_BACKEND
        or "auto" (decoding/backends/auto.py).
        """
        return cls(load_assets(spec, cache_dir=cache_dir, dtype=dtype, device=device, backend=backend), chat=chat)

    @classmethod
    def from_pretrained(cls, model: Any, tokenizer: Any, *, name: str, chat: bool = False) -> "Member":
        """Wrap an already loaded HF causal LM and its fast tokenizer."""
        return cls(assets_for_model(name, model, tokenizer), chat=chat)

    @property
    def name(self) -> str:
        return self.assets.name

    @property
    def family(self) -> str:
        return self.assets.vocab.family

    @property
    def tokenizer(self) -> Any:
        return self.assets.tokenizer

    def with_chat(self, chat: bool) -> "Member":
        return replace(self, chat=chat)

    def render(self, prompt: "Prompt") -> tuple[str, bool]:
        """The member's context text for a prompt, and whether encoding adds special tokens.

        A str with chat=True, or a list of {"role", "content"} messages, is
        rendered with the member's own chat template (which writes BOS itself)
        and opens the assistant turn. A member without a template gets messages
        as a plain "Role: content" transcript ending in "Assistant:".
        """
        messages = _as_messages(prompt)
        template = getattr(self.tokenizer, "chat_template", None)
        if isinstance(prompt, str) and not (self.chat and template):
            return prompt, True
        if template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return text, False
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n\n".join(lines + ["Assistant:"]), True

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def open_session(self, prompt: Prompt, temperature: float = 1.0) -> "MemberSession":
        return MemberSession(self, prompt, temperature)


class MemberSession:
    """One member decoding one text: owns its runner (and so its KV cache) and runs its passes.

    `ids` (token_track.py) says which ids the member reads for a text; `ahead` (ahead.py)
    holds exact scoring's passes computed before they are owed.
    """

    def __init__(self, member: Member, prompt: Prompt, temperature: float = 1.0):
        self.member = member
        self.ids = TokenTrack(member, prompt)
        self.runner = member.assets.backend.new_runner()
        self.scheduler = scheduler_for(member.assets.backend)
        self.forked = PassCounts()  # passes run on forked runners (exact mode's paths)
        self.ahead = AheadPasses(self)
        self._temperature = temperature if temperature > 0 else 1.0
        idx = member.assets.index
        self._sorted_ids = torch.from_numpy(idx.sorted_ids)
        self._eos_ids = torch.tensor(member.assets.vocab.eos_token_ids, dtype=torch.long)

    @property
    def prompt_tokens(self) -> int:
        return self.ids.prompt_tokens

    def member_round(self, ids: Sequence[int], pending: bytes) -> MemberRound:
        """One forward pass: this member's view of a round opened after `ids` (see submit_round)."""
        return gather([self.submit_round(ids, pending)])[0]

    def submit_round(self, ids: Sequence[int], pending: bytes) -> tuple[PassScheduler, Future]:
        """Queue the pass that opens a round after `ids`; the future gives its MemberRound.

        Tokens that cannot continue the text as valid UTF-8 are zeroed here, at the
        token level (so a round never needs renormalising per byte); EOS ends the
        text, so it is possible only at a character boundary.
        """
        index = self.member.assets.index

        def finish(logits):
            sorted_probs, eos = self.probs(logits)
            sorted_probs = sorted_probs * index.validity_mask(pending)
            return MemberRound.opening(index, sorted_probs, 0.0 if pending else eos)

        return self.scheduler, self.scheduler.submit(self.runner, ids, finish)

    def next_token_probs(self, ids: Sequence[int]) -> tuple[np.ndarray, float]:
        """One forward pass: text-token probabilities in sorted index order (unmasked) and EOS mass."""
        return gather([self.submit_probs(ids)])[0]

    def submit_probs(self, ids: Sequence[int], parent: Any = None, fork: bool = False,
                     eager: bool = True) -> tuple[PassScheduler, Future]:
        """Queue a pass; the future gives (sorted probs, EOS mass, the runner's snapshot after it).

        fork=True runs it on a new runner restored from `parent` (exact mode: each beam
        path continues its parent's cache), so passes of many paths can share a batch.
        Without `fork` the session's own runner runs it (and the future gives (probs, eos)).
        """
        if not fork:
            return self.scheduler, self.scheduler.submit(self.runner, ids, self.probs)
        runner = self.member.assets.backend.new_runner() if parent is not None else self.runner
        if parent is not None:
            runner.restore(parent)
        before = PassCounts.of(runner)

        def finish(logits):
            probs, eos = self.probs(logits)
            if runner is not self.runner:
                self.forked.add(PassCounts.of(runner) - before)
            return probs, eos, runner.snapshot()

        return self.scheduler, self.scheduler.submit(runner, ids, finish, eager=eager)

    def probs(self, logits) -> tuple[np.ndarray, float]:
        """Softmax on the logits' device, gathered into sorted index order, then to the host."""
        rows = len(self.member.assets.vocab)
        probs = torch.softmax(logits[:rows].double() / self._temperature, dim=-1)
        sorted_ids, eos_ids = self._device_ids(probs.device)
        sorted_probs = probs.index_select(0, sorted_ids).cpu().numpy()
        eos = float(probs.index_select(0, eos_ids).sum()) if len(eos_ids) else 0.0
        return sorted_probs, eos

    def _device_ids(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._sorted_ids.device != device:
            self._sorted_ids, self._eos_ids = self._sorted_ids.to(device), self._eos_ids.to(device)
        return self._sorted_ids, self._eos_ids

    def pass_counts(self) -> "PassCounts":
        """Every forward pass this session ran: its own runner's and its forked runners'."""
        return PassCounts.of(self.runner) + self.forked
