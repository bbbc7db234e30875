"""A model's next-token logits for a token sequence, reusing its KV cache.

Each round the decoder re-tokenizes prompt + output canonically. Usually the
new ids extend the old ones, but a round can change the member's last tokens
(the text "Hel" then "Hello" re-tokenizes "Hel" into "Hello"). So we keep the
longest common prefix with what the cache holds, crop the cache there, and feed
only the tokens after it.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol, Sequence

import torch


class TokenRunner(Protocol):
    forward_passes: int
    tokens_fed: int
    cache_rebuilds: int

    def next_logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        """1-D float logits of the token after `token_ids`."""


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class CachedRunner:
    """A HF causal LM stepped with a DynamicCache kept across calls."""

    def __init__(self, model: Any):
        self.model = model
        self.forward_passes = 0
        self.tokens_fed = 0
        self.cache_rebuilds = 0
        self._cache: Any = None
        self._cached_ids: list[int] = []
        self._last_logits: torch.Tensor | None = None
        # transformers 5.2x renamed `past_key_values` to `cache` (the old name warns).
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def next_logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        ids = list(token_ids)
        if not ids:
            raise ValueError("a forward pass needs at least one token; add a BOS token or a prompt")
        if ids == self._cached_ids and self._last_logits is not None:
            return self._last_logits
        # Keep at least one token to feed: logits come from the last fed position.
        keep = self._crop_to(min(common_prefix_len(self._cached_ids, ids), len(ids) - 1))
        new = torch.tensor([ids[keep:]], dtype=torch.long)
        with torch.no_grad():
            out = self.model(input_ids=new, use_cache=True, **{self._cache_arg: self._cache})
        self._cache = getattr(out, self._cache_arg)
        self._cached_ids = ids
        self._last_logits = out.logits[0, -1].float()
        self.forward_passes += 1
        self.tokens_fed += new.shape[1]
        return self._last_logits

    def _crop_to(self, keep: int) -> int:
        """Cut the cache back to its first `keep` positions; return how many it really keeps."""
        if self._cache is None or keep == 0:
            self._cache = self._new_cache()
            return 0
        if keep < len(self._cached_ids) and not _slice_layers(self._cache, len(self._cached_ids), keep):
            self.cache_rebuilds += 1
            self._cache = self._new_cache()
            return 0
        return keep

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        # Sliding-window layers drop old keys unless told to keep them (see _slice_layers).
        if hasattr(cache, "activate_past_recording"):
            cache.activate_past_recording()
        return cache


def _slice_layers(cache: Any, held: int, keep: int) -> bool:
    """Drop the positions after `keep` from every layer; False if some layer cannot roll back.

    Subtle: we do not call `Cache.crop`. For sliding-window layers it also
    trims the cache to the window, after which a later, deeper rollback is
    impossible (seen with Gemma-3 past 512 tokens). Instead every layer keeps
    its full history (past recording on, never cropped by the library), and
    rolling back is slicing it. Layers that hold anything else (recurrent
    state, a trimmed window) cannot be rolled back: the caller starts over.
    """
    layers = getattr(cache, "layers", None)
    if layers is None:
        return False
    for layer in layers:
        keys = getattr(layer, "keys", None)
        if keys is None or keys.shape[-2] != held:
            return False
    for layer in layers:
        layer.keys = layer.keys[..., :keep, :]
        layer.values = layer.values[..., :keep, :]
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = keep
    return True


class UncachedRunner:
    """Reference runner: a full forward pass over all ids every time (for tests)."""

    def __init__(self, model: Any):
        self.model = model
        self.forward_passes = 0
        self.tokens_fed = 0
        self.cache_rebuilds = 0

    def next_logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        new = torch.tensor([list(token_ids)], dtype=torch.long)
        with torch.no_grad():
            out = self.model(input_ids=new, use_cache=False)
        self.forward_passes += 1
        self.tokens_fed += new.shape[1]
        return out.logits[0, -1].float()
