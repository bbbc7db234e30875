"""transformers in process: a model's next-token logits for a token sequence, reusing its KV cache.

Each round the decoder re-tokenizes prompt + output canonically. Usually the
new ids extend the old ones, but a round can change the member's last tokens
(the text "Hel" then "Hello" re-tokenizes "Hel" into "Hello"). So we keep the
longest common prefix with what the cache holds, roll the cache back there, and
feed only the tokens after it.

Snapshots (exact mode's beam forks a path's cache for each child) are
copy-on-write: a snapshot shares the cache object; the runner makes its own
copy before the next write. The copy is shallow (new layer objects, the same
key/value tensors): transformers' dynamic layers never write into their
tensors, they `torch.cat` and reassign, so sharing tensors is safe, and a copy
costs microseconds instead of a deep copy's milliseconds and memory.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from chared_flows.decoding.backend import TokenRunner, loop_batch


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class CacheSnapshot:
    ids: tuple[int, ...]
    cache: Any
    logits: torch.Tensor | None


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
        self._shared = False  # the cache object is also held by a snapshot: copy before writing
        # transformers 5.2x renamed `past_key_values` to `cache` (the old name warns).
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._device = _model_device(model)

    def next_logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        ids = list(token_ids)
        if not ids:
            raise ValueError("a forward pass needs at least one token; add a BOS token or a prompt")
        if ids == self._cached_ids and self._last_logits is not None:
            return self._last_logits
        # Keep at least one token to feed: logits come from the last fed position.
        keep = self._crop_to(min(common_prefix_len(self._cached_ids, ids), len(ids) - 1))
        new = torch.tensor([ids[keep:]], dtype=torch.long, device=self._device)
        with torch.inference_mode():
            out = self.model(input_ids=new, use_cache=True, **{self._cache_arg: self._cache})
        self._cache = getattr(out, self._cache_arg)
        self._cached_ids = ids
        self._last_logits = out.logits[0, -1].float()
        self.forward_passes += 1
        self.tokens_fed += new.shape[1]
        return self._last_logits

    def snapshot(self) -> CacheSnapshot:
        self._shared = True
        return CacheSnapshot(tuple(self._cached_ids), self._cache, self._last_logits)

    def restore(self, snapshot: CacheSnapshot) -> None:
        self._cache, self._cached_ids, self._last_logits = snapshot.cache, list(snapshot.ids), snapshot.logits
        self._shared = True

    def _crop_to(self, keep: int) -> int:
        """Cut the cache back to its first `keep` positions; return how many it really keeps."""
        if self._cache is None or keep == 0:
            self._cache, self._shared = self._new_cache(), False
            return 0
        if self._shared:
            self._cache, self._shared = _shallow_copy(self._cache), False
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


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _shallow_copy(cache: Any) -> Any:
    """A cache whose layer objects are new but share the key/value tensors (see the module docstring)."""
    out = copy.copy(cache)
    if getattr(cache, "layers", None) is not None:
        out.layers = [copy.copy(layer) for layer in cache.layers]
        return out
    return copy.deepcopy(cache)  # an unknown cache type: only a deep copy is safe


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
        new = torch.tensor([list(token_ids)], dtype=torch.long, device=_model_device(self.model))
        with torch.inference_mode():
            out = self.model(input_ids=new, use_cache=False)
        self.forward_passes += 1
        self.tokens_fed += new.shape[1]
        return out.logits[0, -1].float()

    def snapshot(self) -> None:
        return None  # stateless: every call is a full pass

    def restore(self, snapshot: None) -> None:
        pass


class TransformersBackend:
    """A HF causal LM in this process."""

    kind = "transformers"

    def __init__(self, model: Any, source: str = ""):
        self.model = model
        self.source = source

    def new_runner(self) -> TokenRunner:
        return CachedRunner(self.model)

    def next_logits_batch(self, runners: Sequence[TokenRunner], token_ids: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        return loop_batch(runners, token_ids)

    def identity(self) -> dict[str, Any]:
        config = getattr(self.model, "config", None)
        return {
            "kind": self.kind,
            "source": self.source,
            "architecture": (getattr(config, "architectures", None) or [type(self.model).__name__])[0],
            "dtype": str(getattr(self.model, "dtype", "")).replace("torch.", ""),
            "device": str(_model_device(self.model)),
        }
