"""A member of an ensemble: tokenizer + byte vocabulary + a model runner, and its per-text session."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch

from chared_flows.decoding.backend import Backend, FactoryBackend, TokenRunner
from chared_flows.decoding.index import PrefixIndex
from chared_flows.decoding.runner import TransformersBackend
from chared_flows.decoding.utf8 import split_complete
from chared_flows.decoding.vocab import ByteVocabulary
from chared_flows.errors import ConfigError, ContextWindowError


Prompt = Union[str, Sequence[Mapping[str, str]]]
_ROLES = ("system", "user", "assistant")


def _as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A prompt as chat messages, checked: a str is one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = []
    for i, message in enumerate(prompt):
        role, content = message.get("role"), message.get("content")
        if role not in _ROLES or not isinstance(content, str):
            raise ConfigError(
                f"message {i} is {dict(message)!r}; each message needs a role in {_ROLES} and str content"
            )
        messages.append({"role": role, "content": content})
    if not messages:
        raise ConfigError("the message list is empty; give at least one user message")
    return messages


@dataclass
class MemberAssets:
    """The heavy, shareable part of a member: built once per model, used by many sessions."""

    name: str
    tokenizer: Any
    vocab: ByteVocabulary
    index: PrefixIndex
    backend: Backend
    context_window: int | None = None
    source: str = ""
    model: Any = field(default=None, repr=False)

    @classmethod
    def build(
        cls,
        name: str,
        tokenizer: Any,
        backend: Backend | Callable[[], TokenRunner],
        *,
        num_rows: int | None = None,
        eos_token_ids: Sequence[int] | None = None,
        context_window: int | None = None,
        source: str = "",
        model: Any = None,
    ) -> "MemberAssets":
        eos = set(eos_token_ids or [])
        if getattr(tokenizer, "eos_token_id", None) is not None:
            eos.add(int(tokenizer.eos_token_id))
        vocab = ByteVocabulary.from_tokenizer(tokenizer, num_rows=num_rows, eos_token_ids=sorted(eos))
        if not hasattr(backend, "new_runner"):  # a bare runner factory
            backend = FactoryBackend(backend, source=source or name)
        return cls(name, tokenizer, vocab, PrefixIndex(vocab), backend, context_window, source, model)


@dataclass(frozen=True)
class Member:
    """One model in an ensemble. Cheap to copy; the assets are shared."""

    assets: MemberAssets
    chat: bool = False

    @classmethod
    def load(cls, spec: str, *, chat: bool = False, cache_dir: str | None = None, dtype: str = "float32") -> "Member":
        """Load an embedded alias, a local HF directory, a .gguf file or a hub id (shared per process).

        Prefix `llama_cpp:` (llama.cpp in process) or write `served:URL?tokenizer=SPEC` (an
        inference server) for the other backends: see decoding/backends/specs.py.
        """
        from chared_flows.decoding.models import load_assets

        return cls(load_assets(spec, cache_dir=cache_dir, dtype=dtype), chat=chat)

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


def assets_for_model(name: str, model: Any, tokenizer: Any, source: str = "") -> MemberAssets:
    model.eval()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
    rows = model.get_output_embeddings().weight.shape[0]
    window = getattr(model.config, "max_position_embeddings", None)
    return MemberAssets.build(
        name,
        tokenizer,
        TransformersBackend(model, source or name),
        num_rows=rows,
        eos_token_ids=eos,
        context_window=window,
        source=source or name,
        model=model,
    )


@dataclass
class RoundState:
    """A member's view of one round: sorted token probabilities (invalid tokens zeroed) and EOS mass."""

    sorted_probs: np.ndarray
    eos_mass: float


class MemberSession:
    """One member decoding one text: owns its runner (and so its KV cache)."""

    def __init__(self, member: Member, prompt: Prompt, temperature: float = 1.0):
        self.member = member
        self.context_text, self._add_special = member.render(prompt)
        self.runner = member.assets.backend.new_runner()
        self._start_ids = self._start_tokens()
        self.prompt_tokens = len(self._start_ids) + len(member.encode(self.context_text, self._add_special))
        self._temperature = temperature if temperature > 0 else 1.0
        idx = member.assets.index
        self._sorted_ids = torch.from_numpy(idx.sorted_ids)
        self._eos_ids = torch.tensor(member.assets.vocab.eos_token_ids, dtype=torch.long)

    def _start_tokens(self) -> list[int]:
        """[] normally; for a prompt that encodes to nothing, one BOS (or EOS) token to condition on.

        Subtle: tokenizers without a BOS post-processor (SmolLM2) encode "" to
        no ids at all, and a forward pass needs at least one.
        """
        if self.member.encode(self.context_text, self._add_special):
            return []
        tok = self.member.tokenizer
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if start is None:
            raise ConfigError(
                f"the prompt encodes to no tokens for member {self.member.name!r}, which has no BOS or EOS "
                "token to start from; give a non-empty prompt"
            )
        return [int(start)]

    def check_prompt_fits(self) -> None:
        window = self.member.assets.context_window
        if window is not None and self.prompt_tokens >= window:
            raise ContextWindowError(
                f"prompt is {self.prompt_tokens} tokens for member {self.member.name!r}, whose context window "
                f"is {window}: {self.prompt_tokens - window + 1} tokens too many; shorten the prompt"
            )

    def token_ids(self, generated: bytes) -> list[int] | None:
        """Canonical ids of context + generated text; None if this member cannot write its tail.

        Subtle: a round may end inside a multi-byte character (a byte-level
        token can hold half an emoji). The complete part is tokenized
        canonically; the incomplete tail is fed as single-byte tokens.
        """
        complete, tail = split_complete(generated)
        ids = self._start_ids + self.member.encode(self.context_text + complete.decode("utf-8"), self._add_special)
        for byte in tail:
            token = self.member.assets.vocab.single_byte_token(byte)
            if token is None:
                return None
            ids.append(token)
        return ids

    def fits(self, ids: Sequence[int]) -> bool:
        window = self.member.assets.context_window
        return window is None or len(ids) < window

    def round_state(self, ids: Sequence[int], pending: bytes) -> RoundState:
        """One forward pass: the member's next-token distribution, ready for marginals."""
        sorted_probs, eos = self.next_token_probs(ids)
        sorted_probs = sorted_probs * self.member.assets.index.validity_mask(pending)
        # EOS ends the text, so it is only possible at a character boundary.
        return RoundState(sorted_probs, 0.0 if pending else eos)

    def next_token_probs(self, ids: Sequence[int]) -> tuple[np.ndarray, float]:
        """One forward pass: text-token probabilities in sorted index order (unmasked) and EOS mass."""
        logits = self.runner.next_logits(ids)
        rows = len(self.member.assets.vocab)
        probs = torch.softmax(logits[:rows].double() / self._temperature, dim=-1)
        sorted_probs = probs.index_select(0, self._sorted_ids).numpy()
        eos = float(probs.index_select(0, self._eos_ids).sum()) if len(self._eos_ids) else 0.0
        return sorted_probs, eos

    def anchor(self, backoff_tokens: int) -> tuple[list[int], bytes]:
        """Canonical context ids cut back by up to `backoff_tokens` text tokens, and the bytes cut off.

        Exact mode starts its beam at the cut and consumes the cut bytes like
        generated ones, so the prompt's last (maybe partial) token is summed
        over every tokenization. Subtle: we stop backing off at a special or
        template token (no bytes), when a token's bytes are not literally the
        text's tail (a normaliser rewrote them), and we always keep one id: a
        forward pass needs something to condition on.
        """
        ids = self._start_ids + self.member.encode(self.context_text, self._add_special)
        text = self.context_text.encode("utf-8")
        cut, tail = len(ids), b""
        while cut > 1 and len(ids) - cut < backoff_tokens:
            data = self.member.assets.vocab.tokens[ids[cut - 1]]
            if data is None or not text.endswith(data + tail):
                break
            tail, cut = data + tail, cut - 1
        return ids[:cut], tail
