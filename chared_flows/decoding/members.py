"""A member of an ensemble: tokenizer + byte vocabulary + a model runner, and its per-text session."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch

from chared_flows.decoding.backends.assets import MemberAssets, assets_for_model
from chared_flows.decoding.backends.loading import load_assets
from chared_flows.decoding.rounds import MemberRound
from chared_flows.decoding.backends.scheduler import PassScheduler, gather, scheduler_for
from chared_flows.decoding.text import check_prompt
from chared_flows.decoding.utf8 import split_complete
from chared_flows.errors import ConfigError, ContextWindowError

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


@dataclass
class PassCounts:
    forward_passes: int = 0
    tokens_fed: int = 0
    cache_rebuilds: int = 0

    @classmethod
    def of(cls, runner: Any) -> "PassCounts":
        return cls(runner.forward_passes, runner.tokens_fed, runner.cache_rebuilds)

    def __add__(self, other: "PassCounts") -> "PassCounts":
        return PassCounts(self.forward_passes + other.forward_passes, self.tokens_fed + other.tokens_fed,
                          self.cache_rebuilds + other.cache_rebuilds)

    def __sub__(self, other: "PassCounts") -> "PassCounts":
        return PassCounts(self.forward_passes - other.forward_passes, self.tokens_fed - other.tokens_fed,
                          self.cache_rebuilds - other.cache_rebuilds)

    def add(self, other: "PassCounts") -> None:
        self.forward_passes += other.forward_passes
        self.tokens_fed += other.tokens_fed
        self.cache_rebuilds += other.cache_rebuilds


class MemberSession:
    """One member decoding one text: owns its runner (and so its KV cache)."""

    def __init__(self, member: Member, prompt: Prompt, temperature: float = 1.0):
        self.member = member
        self.context_text, self._add_special = member.render(prompt)
        self.runner = member.assets.backend.new_runner()
        self.scheduler = scheduler_for(member.assets.backend)
        self.forked = PassCounts()  # passes run on forked runners (exact mode's paths)
        self._start_ids = self._start_tokens()
        self._own: dict[bytes, list[int]] = {}  # generated bytes -> the member's own ids (see follow)
        self._prefill = None  # exact scoring: one pass over the text's canonical tokens (see prefill_text)
        self._ahead: dict[tuple[int, ...], tuple[PassScheduler, Future]] = {}  # exact scoring: see queue_ahead
        self._queued: set[tuple[int, ...]] = set()  # every id sequence ever queued ahead (none twice)
        self._peeked: dict[tuple[int, ...], tuple] = {}  # prefill results looked at ahead (see prefilled)
        self.token_ends: dict[tuple, list] = {}  # exact scoring: ExactBeam._token_ends' memo
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
        """This member's ids for context + generated text; None if it cannot write the tail.

        The member's own tokens where the decoder recorded them (`follow`), else the
        canonical tokenization.
        """
        own = self._own.get(bytes(generated))
        return list(own) if own is not None else self.canonical_ids(generated)

    def canonical_ids(self, generated: bytes) -> list[int] | None:
        """Canonical ids of context + generated text; None if this member cannot write its tail.

        Subtle: a round may end inside a multi-byte character (a byte-level token can hold
        half an emoji). The complete part is tokenized canonically; the incomplete tail is
        fed as single-byte tokens.
        """
        complete, tail = split_complete(generated)
        ids = self._start_ids + self.member.encode(self.context_text + complete.decode("utf-8"), self._add_special)
        for byte in tail:
            token = self.member.assets.vocab.single_byte_token(byte)
            if token is None:
                return None
            ids.append(token)
        return ids

    def follow(self, origin: bytes, written: bytes, token: int | None) -> None:
        """A round opened after `origin` wrote `written`; `token`: this member's token that ended it.

        The member continues from its own tokens, as its own decoding would, instead of
        re-reading the whole text canonically (see continued_ids).
        """
        ids = self.continued_ids(self.token_ids(origin), origin, written, token)
        if ids is not None:
            self._own[bytes(origin) + bytes(written)] = ids

    def continued_ids(self, base: Sequence[int] | None, origin: bytes, written: bytes,
                      token: int | None) -> list[int] | None:
        """This member's ids after a round that wrote `written` on top of `base` (the ids of `origin`).

        - The round ended with this member's own token: base + [token]. After "\n   " the
          canonical split of a text may differ from the tokens the model wrote, and a model
          that sees a split it never writes drifts (SmolLM2 then writes runs of newlines);
          with one member at weight 1 this makes greedy reproduce the model's own greedy text.
        - Another member ended the round inside this member's token: base + the canonical
          tokens of `written` alone. Subtle: re-tokenizing the *whole* text instead would
          rewrite tokens this member wrote rounds ago (a canonical merge across an old
          boundary), roll its cache back past them and feed them again (Gemma-3 fed 1.8
          tokens per output token that way).
        - Anything else (no base, a round starting inside a character, a tokenizer that
          does not tokenize a fragment literally): the canonical tokenization of the text.
        """
        if base is not None and token is not None:
            return list(base) + [token]
        fragment = None if base is None or split_complete(bytes(origin))[1] else self._fragment_ids(written)
        if fragment is not None:
            return list(base) + fragment
        return self.canonical_ids(bytes(origin) + bytes(written))

    def _fragment_ids(self, written: bytes) -> list[int] | None:
        complete, tail = split_complete(bytes(written))
        ids = self.member.encode(complete.decode("utf-8"), add_special_tokens=False) if complete else []
        vocab = self.member.assets.vocab
        if b"".join(vocab.tokens[i] or b"\0" for i in ids) != complete:
            return None  # e.g. a SentencePiece dummy prefix: not this fragment's bytes
        for byte in tail:
            token = vocab.single_byte_token(byte)
            if token is None:
                return None
            ids.append(token)
        return ids

    def keep_only(self, generated: bytes) -> None:
        """Forget recorded tokens of texts other than `generated` (a search's rejected candidates)."""
        own = self._own.get(bytes(generated))
        self._own = {} if own is None else {bytes(generated): own}

    def fits(self, ids: Sequence[int]) -> bool:
        window = self.member.assets.context_window
        return window is None or len(ids) < window

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
            sorted_probs, eos = self._probs(logits)
            sorted_probs = sorted_probs * index.validity_mask(pending)
            return MemberRound.opening(index, sorted_probs, 0.0 if pending else eos)

        return self.scheduler, self.scheduler.submit(self.runner, ids, finish)

    def next_token_probs(self, ids: Sequence[int]) -> tuple[np.ndarray, float]:
        """One forward pass: text-token probabilities in sorted index order (unmasked) and EOS mass."""
        return gather([self.submit_probs(ids)])[0]

    def queue_ahead(self, ids: Sequence[int], parent: Any) -> None:
        """Exact scoring: queue now the pass a path will owe once the known text ends its token.

        It waits in the scheduler (eager=False) and leaves with the next batch this scoring
        needs, so the passes owed at many later bytes share one forward; `take_ahead` hands
        it over when owed, `cancel_ahead` drops the ones never owed (their path was pruned).
        """
        key = tuple(ids)
        if key in self._queued or not self.fits(ids) or (self._prefill is not None and self._prefill.covers(ids)):
            return
        self._queued.add(key)
        self._ahead[key] = self.submit_probs(ids, parent=parent, fork=True, eager=False)

    def take_ahead(self, ids: Sequence[int]) -> tuple[PassScheduler, Future] | None:
        return self._ahead.pop(tuple(ids), None)

    def cancel_ahead(self) -> None:
        self.scheduler.withdraw(future for _, future in self._ahead.values())
        self._ahead.clear()
        self._peeked.clear()
        self.token_ends.clear()

    def submit_probs(self, ids: Sequence[int], parent: Any = None, fork: bool = False,
                     eager: bool = True) -> tuple[PassScheduler, Future]:
        """Queue a pass; the future gives (sorted probs, EOS mass, the runner's snapshot after it).

        fork=True runs it on a new runner restored from `parent` (exact mode: each beam
        path continues its parent's cache), so passes of many paths can share a batch.
        Without `fork` the session's own runner runs it (and the future gives (probs, eos)).
        """
        if not fork:
            return self.scheduler, self.scheduler.submit(self.runner, ids, self._probs)
        runner = self.member.assets.backend.new_runner() if parent is not None else self.runner
        if parent is not None:
            runner.restore(parent)
        before = PassCounts.of(runner)

        def finish(logits):
            probs, eos = self._probs(logits)
            if runner is not self.runner:
                self.forked.add(PassCounts.of(runner) - before)
            return probs, eos, runner.snapshot()

        return self.scheduler, self.scheduler.submit(runner, ids, finish, eager=eager)

    def _probs(self, logits) -> tuple[np.ndarray, float]:
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

    def prefill_text(self, text: bytes) -> None:
        """Exact scoring: one pass over the canonical tokens of prompt + `text` serves every pass
        owed on a prefix of them (`prefilled`). Backends without `prefill` keep one pass each."""
        prefill = getattr(self.member.assets.backend, "prefill", None)
        ids = self.canonical_ids(text)
        if prefill is None or not ids or not self.fits(ids):
            return
        self._prefill = prefill(ids)  # None: the backend could not (each prefix then has its own pass)
        if self._prefill is not None:
            self.forked.add(PassCounts(forward_passes=1, tokens_fed=len(ids)))

    def prefilled(self, ids: Sequence[int], peek: bool = False) -> tuple | None:
        """(sorted probs, EOS mass, snapshot) for `ids` from the prefill, or None if it does not cover them.

        peek=True (looking ahead, see ExactBeam.queue_ahead) keeps the result for the call that
        settles the path, which takes it (a softmax over the vocabulary is not free).
        """
        key = tuple(ids)
        known = self._peeked.get(key) if peek else self._peeked.pop(key, None)
        if known is not None:
            return known
        if self._prefill is None or not self._prefill.covers(ids):
            return None
        probs, eos = self._probs(self._prefill.logits_after(ids))
        known = probs, eos, self._prefill.snapshot_after(ids)
        if peek:
            self._peeked[key] = known
        return known

    def pass_counts(self) -> "PassCounts":
        """Every forward pass this session ran: its own runner's and its forked runners'."""
        return PassCounts.of(self.runner) + self.forked

    def anchor(self, backoff_tokens: int, generated: bytes = b"") -> tuple[list[int], bytes]:
        """Canonical ids of context + `generated`, cut back by up to `backoff_tokens` text tokens,
        and the bytes cut off.

        Exact mode starts its beam at the cut and consumes the cut bytes like
        generated ones, so the text's last (maybe partial) token is summed over
        every tokenization (at the prompt's end, and when a beam is re-seeded).
        """
        ids = self.token_ids(generated) if generated else self._start_ids + self.member.encode(
            self.context_text, self._add_special)
        if ids is None:
            raise ValueError("the member cannot write the generated text's incomplete tail")
        text = self.context_text.encode("utf-8") + bytes(generated)
        cut = self.tail_boundaries(backoff_tokens, ids, text)[-1]
        return ids[: len(ids) - cut[0]], text[len(text) - cut[1]:]

    def tail_boundaries(self, max_tokens: int, ids: list[int] | None = None,
                        text: bytes | None = None) -> list[tuple[int, int]]:
        """(tokens, bytes) cut off the context's end at each of its last token boundaries, nearest first.

        Starts with (0, 0). Subtle: we stop at a special or template token (no
        bytes), when a token's bytes are not literally the text's tail (a
        normaliser rewrote them), and we always keep one id: a forward pass needs
        something to condition on.
        """
        if ids is None:
            ids = self._start_ids + self.member.encode(self.context_text, self._add_special)
        if text is None:
            text = self.context_text.encode("utf-8")
        out, tail = [(0, 0)], b""
        while len(out) <= max_tokens and len(ids) - len(out) >= 1:
            data = self.member.assets.vocab.tokens[ids[len(ids) - len(out)]]
            if data is None or not text.endswith(data + tail):
                break
            tail = data + tail
            out.append((len(out), len(tail)))
        return out
