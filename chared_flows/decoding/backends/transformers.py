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
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from chared_flows.decoding.backends import cpu_linear
from chared_flows.decoding.backends.protocol import TokenRunner, common_prefix_len, loop_batch


@dataclass(frozen=True)
class CacheSnapshot:
    ids: tuple[int, ...]
    cache: Any
    logits: torch.Tensor | None


class Prefill:
    """A pass over a whole token sequence, served prefix by prefix as if each had its own pass."""

    def __init__(self, model: Any, ids: list[int], cache: Any, logits: torch.Tensor):
        self.model, self.ids, self.cache, self.logits = model, ids, cache, logits

    def covers(self, ids: Sequence[int]) -> bool:
        return 0 < len(ids) <= len(self.ids) and list(ids) == self.ids[: len(ids)]

    def logits_after(self, ids: Sequence[int]) -> torch.Tensor:
        return self.logits[len(ids) - 1]

    def snapshot_after(self, ids: Sequence[int]) -> CacheSnapshot:
        """A runner snapshot holding exactly `ids` (views of the prefill's cache, no copy)."""
        return CacheSnapshot(tuple(ids), _row_view(self.model, self.cache, 0, 0, len(ids)), self.logits_after(ids))


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
        self._cache_arg = cache_argument(model)
        self._last_only = last_logits_only(model)
        self._device = _model_device(model)

    def next_logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        ids = list(token_ids)
        cached = self.cached_logits(ids)
        if cached is not None:
            return cached
        keep = self.prepare(ids)
        new = torch.tensor([ids[keep:]], dtype=torch.long, device=self._device)
        with torch.inference_mode():
            out = self.model(input_ids=new, use_cache=True, **{self._cache_arg: self._cache}, **self._last_only)
        self.commit(ids, getattr(out, self._cache_arg), out.logits[0, -1].float(), new.shape[1])
        return self._last_logits

    def cached_logits(self, ids: list[int]) -> torch.Tensor | None:
        """The logits after `ids` if they are what the runner computed last (no pass needed)."""
        if not ids:
            raise ValueError("a forward pass needs at least one token; add a BOS token or a prompt")
        return self._last_logits if ids == self._cached_ids and self._last_logits is not None else None

    def prepare(self, ids: list[int]) -> int:
        """Roll the cache back to its longest common prefix with `ids`; return how many ids it keeps.

        At least one id is left to feed: logits come from the last fed position.
        """
        return self._crop_to(min(common_prefix_len(self._cached_ids, ids), len(ids) - 1))

    def commit(self, ids: list[int], cache: Any, logits: torch.Tensor, fed: int) -> None:
        self._cache, self._shared = cache, False
        self._cached_ids, self._last_logits = list(ids), logits
        self.forward_passes += 1
        self.tokens_fed += fed

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
            self._cached_ids, self._last_logits = [], None
            return 0
        if self._shared:
            self._cache, self._shared = _shallow_copy(self._cache), False
        if keep < len(self._cached_ids) and not _slice_layers(self._cache, len(self._cached_ids), keep):
            self.cache_rebuilds += 1
            self._cache, self._cached_ids, self._last_logits = self._new_cache(), [], None
            return 0
        # Subtle: say what the cache holds now, before the pass: if the pass fails, the next
        # call must not believe the cropped positions are still there.
        self._cached_ids, self._last_logits = self._cached_ids[:keep], None
        return keep

    def _new_cache(self) -> Any:
        return new_cache(self.model)


def cache_argument(model: Any) -> str:
    # transformers 5.2x renamed `past_key_values` to `cache` (the old name warns).
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def last_logits_only(model: Any, positions: torch.Tensor | int = 1) -> dict[str, Any]:
    """The forward's argument that projects only the positions read onto the vocabulary.

    Without it the output layer runs at every fed position: a 40-token prompt on Gemma-3
    (262k rows) paid 40 of them to read one, about as much again as the rest of the model.
    `positions`: 1 (the last, one sequence) or a (rows, 1) tensor of each row's last real
    position (the batch right-pads its new tokens). Models without the argument get {}.
    """
    return {"logits_to_keep": positions} if _keeps_logits(type(model)) else {}


@functools.lru_cache(maxsize=None)
def _keeps_logits(model_class: type) -> bool:
    # Once per model class: every batched pass asks, and reading a signature is not free.
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
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


MAX_BATCHED_NEW_TOKENS = 4  # sequences owing more (a prompt's prefill) run alone: padding them would waste the batch


class TransformersBackend:
    """A HF causal LM in this process."""

    kind = "transformers"

    def __init__(self, model: Any, source: str = ""):
        self.model = model
        self.source = source
        self._cache_arg = cache_argument(model)
        self.linear_kernels = cpu_linear.install(model)  # "onednn" on CPU fp32 where it checks out, else "stock"

    def new_runner(self) -> TokenRunner:
        return CachedRunner(self.model)

    def next_logits_batch(self, runners: Sequence[TokenRunner], token_ids: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """The next-token logits of several sequences, the short steps in one batched forward pass.

        Each sequence keeps its own compact cache. The batch left-pads the caches to the
        longest, right-pads the new tokens, and passes an attention mask and explicit
        positions. Subtle: padding only at the two ends keeps every real token's distance
        to every other real token, so sliding-window layers (Gemma-3) see exactly the
        window they would alone; padding between a cache and its new tokens would not.
        Afterwards each sequence's cache is a contiguous view of the batch's (no copy).
        """
        if len(runners) != len(token_ids):
            raise ValueError(f"{len(runners)} runners for {len(token_ids)} id sequences; pass one per runner")
        if not all(isinstance(r, CachedRunner) for r in runners):
            return loop_batch(runners, token_ids)
        out: list[torch.Tensor | None] = [None] * len(runners)
        rows = []
        for i, (runner, ids) in enumerate(zip(runners, token_ids)):
            ids = list(ids)
            cached = runner.cached_logits(ids)
            if cached is not None:
                out[i] = cached
            elif len(ids) - common_prefix_len(runner._cached_ids, ids) > MAX_BATCHED_NEW_TOKENS or len(ids) < 2:
                out[i] = runner.next_logits(ids)
            else:
                rows.append((i, runner, ids, runner.prepare(ids)))
        if len(rows) == 1:
            i, runner, ids, _ = rows[0]
            out[i] = runner.next_logits(ids)
        elif rows:
            for (i, *_), logits in zip(rows, self._forward_rows([r[1:] for r in rows])):
                out[i] = logits
        return out  # type: ignore[return-value]

    def _forward_rows(self, rows: list[tuple[CachedRunner, list[int], int]]) -> list[torch.Tensor]:
        device = _model_device(self.model)
        keeps = [keep for _, _, keep in rows]
        fresh = [len(ids) - keep for _, ids, keep in rows]
        held, width = max(keeps), max(fresh)
        inputs = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), held + width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for b, (_, ids, keep) in enumerate(rows):
            inputs[b, : fresh[b]] = torch.tensor(ids[keep:])
            mask[b, held - keep: held + fresh[b]] = 1
            positions[b] = keep + torch.arange(width)
        cache = self._stack_caches([r._cache for r, _, _ in rows], keeps, held) if held else new_cache(self.model)
        last = (torch.tensor(fresh) - 1).unsqueeze(1)  # each row's last real position (right padding)
        keep_last = last_logits_only(self.model, last.to(device))
        with torch.inference_mode():
            result = self.model(
                input_ids=inputs.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                use_cache=True, **{self._cache_arg: cache}, **keep_last,
            )
        batch_cache = getattr(result, self._cache_arg)
        if keep_last:
            logits = result.logits[:, 0].float()
        else:
            logits = result.logits[torch.arange(len(rows)), last[:, 0]].float()
        out = []
        for b, (runner, ids, keep) in enumerate(rows):
            row_cache = _row_view(self.model, batch_cache, b, held - keep, held + fresh[b])
            runner.commit(ids, row_cache, logits[b], fresh[b])
            out.append(logits[b])
        return out

    def _stack_caches(self, caches: list[Any], keeps: list[int], held: int) -> Any:
        """One batch cache: each sequence's keys and values left-padded to `held` positions."""
        stacked = new_cache(self.model)
        for index, layer in enumerate(stacked.layers):
            rows = [c.layers[index] for c in caches]
            full = next(r for r, keep in zip(rows, keeps) if keep)  # some row holds keys: held > 0
            keys = full.keys.new_zeros((len(rows), full.keys.shape[1], held, full.keys.shape[3]))
            values = full.values.new_zeros((len(rows), full.values.shape[1], held, full.values.shape[3]))
            for b, (row, keep) in enumerate(zip(rows, keeps)):
                if keep:
                    keys[b, :, held - keep:] = row.keys[0, :, :keep]
                    values[b, :, held - keep:] = row.values[0, :, :keep]
            _fill_layer(layer, keys, values, held)
        return stacked

    def prefill(self, token_ids: Sequence[int]) -> "Prefill":
        """One forward pass over a whole sequence: the logits after each prefix, and its cache.

        Scoring a known text in exact mode owes a pass for every prefix of the text's
        canonical tokenization; one pass over all of them costs about as much as a few
        one-token passes (the same weights, read once).
        """
        ids = list(token_ids)
        cache = new_cache(self.model)
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=_model_device(self.model)), use_cache=True,
                             **{self._cache_arg: cache})
        return Prefill(self.model, ids, getattr(out, self._cache_arg), out.logits[0].float())

    def identity(self) -> dict[str, Any]:
        config = getattr(self.model, "config", None)
        return {
            "kind": self.kind,
            "source": self.source,
            "architecture": (getattr(config, "architectures", None) or [type(self.model).__name__])[0],
            "dtype": str(getattr(self.model, "dtype", "")).replace("torch.", ""),
            "device": str(_model_device(self.model)),
            "linear_kernels": self.linear_kernels,
        }


def _fill_layer(layer: Any, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
    """Give a fresh cache layer these keys and values (as its own lazy initialisation would)."""
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values
    if hasattr(layer, "cumulative_length"):
        layer.cumulative_length = length


def _row_view(model: Any, batch_cache: Any, row: int, start: int, stop: int) -> Any:
    """Sequence `row`'s positions [start, stop) of a batch cache, as its own cache (views, no copy)."""
    cache = new_cache(model)
    for layer, source in zip(cache.layers, batch_cache.layers):
        _fill_layer(layer, source.keys[row: row + 1, :, start:stop], source.values[row: row + 1, :, start:stop],
                    stop - start)
    return cache
