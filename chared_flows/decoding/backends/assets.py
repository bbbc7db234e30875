"""The heavy, shareable part of a member: tokenizer, byte vocabulary, prefix index, backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from chared_flows.decoding.backends.protocol import Backend, FactoryBackend, TokenRunner
from chared_flows.decoding.index import PrefixIndex
from chared_flows.decoding.backends.transformers import TransformersBackend
from chared_flows.decoding.vocab import ByteVocabulary


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
