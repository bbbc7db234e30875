"""llama.cpp in process (llama-cpp-python): GGUF files directly, no conversion.

One `LlamaCppBackend` loads the model's weights once; each runner gets its own
llama.cpp context (its own KV cache), taken from a pool so that a new
session does not pay for allocating one.

KV reuse is the same longest-common-prefix rule as transformers.py: keep the
positions the new ids share with what the context holds, remove the rest with
llama.cpp's own `llama_memory_seq_rm`, feed only the new tokens, and ask for
logits at the last position only (the full-vocabulary row, all output rows).

Snapshots (exact mode forks a path's state for each child) use llama.cpp's
sequences and state copies. The runner decodes in sequence 0; a snapshot
copies sequence 0 into a spare sequence id with `llama_memory_seq_cp` (in a
*unified* KV cache that copy shares cells: microseconds, no tensor copied),
for restoring into the same context, and exports the sequence's KV cells
with `llama_state_seq_get_data`, for restoring into any other context
(`llama_state_seq_set_data` into its sequence 0, then cut to the snapshot's
length). Exact mode restores every path's parent snapshot into a *new*
runner, so in another context: before state copies each such restore re-fed
prompt + text from position 0 (99 s for the exact score of a 286-character
text with SmolLM2; docs/performance.md). An exported state is 18-23 kB per
position; exporting or loading 58 positions (1.3 MB) took 0.1-0.35 ms,
re-feeding them 0.5-1 s (1 thread). Without a state (`state_copies=0`), restoring falls back to
re-feeding: the next call rolls back to the common prefix and feeds the rest.

Threads: a context is only ever touched by the thread running its runner.
A snapshot is exported right after its runner's pass (the scheduler's
`finish`, after the batch), a restore into another context only records the
snapshot and the runner loads its bytes at its next pass, in its own thread;
the bytes are immutable and shared by every restore. So no lock is needed,
and the loads of one batch run in parallel with its decodes.

Scoring a known text in exact mode (`prefill`): one decode over the text's
canonical tokens with logits at every position, like transformers.py's, and
its state exported once; `snapshot_after(ids)` shares that state, cut to
len(ids) when loaded.

Traps handled here:
- Sliding-window models (Gemma-3): by default llama.cpp keeps only the window
  in the SWA layers, after which rolling back further is impossible.
  `swa_full=True` keeps every position, as transformers.py does.
- A runner takes its context from the pool at its first pass, not when made:
  exact scoring makes runners for passes queued ahead that may never run.
- Freeing a snapshot's sequence happens when the snapshot object is garbage
  collected, which can be in any thread, at any allocation, even while this
  runner's decode runs (ctypes releases the GIL). So the finaliser only
  queues the id; the runner frees queued ids at its next call, in its thread.
- A unified cache of n cells holds all sequences' distinct positions. If
  branches fill it, decode reports "no KV slot": we drop the snapshot
  sequences (their snapshots fall back to re-feeding) and retry once.
- llama.cpp prints to stderr by default; only its errors get through (see
  `_init_backend`).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from chared_flows.decoding.backends.protocol import TokenRunner, common_prefix_len, loop_batch
from chared_flows.errors import BackendError, ContextWindowError, MissingExtraError, ModelLoadError

DEFAULT_CONTEXT = 4096
DEFAULT_SNAPSHOT_SEQS = 32
_NO_KV_SLOT = 1  # llama_decode's return code when the cache has no room for the batch


def import_llama_cpp() -> Any:
    try:
        import llama_cpp
        from llama_cpp._logger import set_verbose
    except ImportError:
        raise MissingExtraError("llama_cpp", "llamacpp") from None
    set_verbose(False)
    return llama_cpp


_BACKEND_INIT = threading.Lock()
_backend_ready = False


_GGML_LOG_ERROR = 4  # ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
_log_callback: Any = None  # the ctypes callback must stay referenced while llama.cpp may call it


def _init_backend(lib: Any) -> None:
    """Initialise llama.cpp once; let only its errors through to stderr.

    Subtle: llama-cpp-python's log filter maps ggml's levels with an older enum
    (it takes WARN=3 for ERROR), so warnings got through (each Gemma context
    printed "using full-size SWA cache"); we install our own filter.
    """
    global _backend_ready, _log_callback
    with _BACKEND_INIT:
        if not _backend_ready:
            lib.llama_backend_init()

            @lib.llama_log_callback
            def errors_only(level: int, text: bytes, user_data: Any) -> None:
                if level == _GGML_LOG_ERROR:
                    sys.stderr.write(text.decode("utf-8", "replace"))

            _log_callback = errors_only
            lib.llama_log_set(_log_callback, ctypes.c_void_p(0))
            _backend_ready = True


class _Context:
    """One llama.cpp context: a KV cache with sequence 0 live and spare ids for snapshots."""

    def __init__(self, backend: "LlamaCppBackend"):
        from llama_cpp import _internals

        lib = backend.lib
        params = lib.llama_context_default_params()
        params.n_ctx = backend.n_ctx
        params.n_batch = backend.n_batch
        params.n_ubatch = backend.n_batch
        params.n_seq_max = backend.snapshot_seqs + 1
        params.n_threads = backend.threads
        params.n_threads_batch = backend.threads
        params.kv_unified = True  # sequence copies share cells instead of copying tensors
        params.swa_full = True  # keep every position in sliding-window layers, so rollback always works
        params.no_perf = True
        self.lib = lib
        self.ctx = _internals.LlamaContext(model=backend.model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=backend.n_batch, embd=0, n_seq_max=1, verbose=False)
        self.n_vocab = backend.n_vocab
        self.n_batch = backend.n_batch
        self.n_seq_max = backend.snapshot_seqs + 1
        self.generation = 0  # bumped when snapshot sequences are dropped: older snapshots re-feed
        self.free_seqs = list(range(backend.snapshot_seqs, 0, -1))
        self.released: list[tuple[int, int]] = []  # (generation, seq id) queued by finalisers

    def export(self, seq: int = 0) -> Any:
        """Sequence `seq`'s KV cells as bytes (`llama_state_seq_get_data`), loadable into any context
        of the same model; None if llama.cpp wrote nothing."""
        size = self.lib.llama_state_seq_get_size(self.ctx.ctx, seq)
        if not size:
            return None
        data = (ctypes.c_uint8 * size)()
        return data if self.lib.llama_state_seq_get_data(self.ctx.ctx, data, size, seq) else None

    def load(self, data: Any, keep: int) -> bool:
        """Sequence 0 := an exported state, cut to its first `keep` positions; False if it did not fit."""
        if not self.lib.llama_state_seq_set_data(self.ctx.ctx, data, len(data), 0):
            return False
        return self.remove(0, keep)

    def remove(self, seq: int, start: int) -> bool:
        return bool(self.lib.llama_memory_seq_rm(self.ctx.memory, seq, start, -1))

    def copy(self, src: int, dst: int) -> None:
        self.lib.llama_memory_seq_cp(self.ctx.memory, src, dst, -1, -1)

    def take_seq(self) -> int | None:
        self.free_queued()
        return self.free_seqs.pop() if self.free_seqs else None

    def queue_release(self, generation: int, seq: int) -> None:
        self.released.append((generation, seq))  # list.append is atomic: safe from any thread

    def free_queued(self) -> None:
        while self.released:
            generation, seq = self.released.pop()
            if generation == self.generation:
                self.remove(seq, 0)
                self.free_seqs.append(seq)

    def drop_snapshots(self) -> None:
        """Free every snapshot sequence; their snapshots fall back to re-feeding."""
        for seq in range(1, self.n_seq_max):
            self.remove(seq, 0)
        self._new_generation()

    def clear(self) -> None:
        """Empty the whole cache (a pooled context handed to a new runner)."""
        self.lib.llama_memory_clear(self.ctx.memory, True)
        self._new_generation()

    def _new_generation(self) -> None:
        self.generation += 1
        self.released.clear()
        self.free_seqs = list(range(self.n_seq_max - 1, 0, -1))

    def decode(self, tokens: Sequence[int], start: int) -> int:
        """Feed `tokens` at positions start.. in sequence 0, in chunks; 0 or llama_decode's error code."""
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i:i + self.n_batch]
            self.batch.set_batch(batch=chunk, n_past=start + i, logits_all=False)
            code = self.lib.llama_decode(self.ctx.ctx, self.batch.batch)
            if code != 0:
                return code
        return 0

    def decode_all(self, tokens: Sequence[int]) -> torch.Tensor | None:
        """Feed `tokens` from position 0 in sequence 0 with logits at every position: (len, n_vocab),
        or None if llama.cpp could not decode them (the sequence is emptied)."""
        out = np.empty((len(tokens), self.n_vocab), dtype=np.float32)
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i:i + self.n_batch]
            self.batch.set_batch(batch=chunk, n_past=i, logits_all=True)
            if self.lib.llama_decode(self.ctx.ctx, self.batch.batch) != 0:
                self.remove(0, 0)
                return None
            rows = self.lib.llama_get_logits(self.ctx.ctx)
            out[i:i + len(chunk)] = np.ctypeslib.as_array(rows, shape=(len(chunk), self.n_vocab))
        return torch.from_numpy(out)

    def last_logits(self) -> torch.Tensor:
        row = self.lib.llama_get_logits_ith(self.ctx.ctx, -1)
        return torch.from_numpy(np.ctypeslib.as_array(row, shape=(self.n_vocab,)).copy())


@dataclass(frozen=True, eq=False)
class LlamaSnapshot:
    ids: tuple[int, ...]
    logits: torch.Tensor | None
    context: _Context | None = None  # set when `seq` holds this state in that context
    generation: int = -1
    seq: int | None = None
    state: Any = None  # the KV cells of `ids` (or of a longer sequence they begin), as _Context.export wrote them


class LlamaPrefill:
    """One decode of a whole sequence with logits at every position, served prefix by prefix
    (the same interface as transformers.py's Prefill)."""

    def __init__(self, ids: list[int], logits: torch.Tensor, state: Any):
        self.ids, self.logits, self.state = ids, logits, state

    def covers(self, ids: Sequence[int]) -> bool:
        return 0 < len(ids) <= len(self.ids) and list(ids) == self.ids[: len(ids)]

    def logits_after(self, ids: Sequence[int]) -> torch.Tensor:
        return self.logits[len(ids) - 1]

    def snapshot_after(self, ids: Sequence[int]) -> LlamaSnapshot:
        """A snapshot of exactly `ids`: the prefill's whole state, cut to len(ids) when loaded (no copy now)."""
        return LlamaSnapshot(tuple(ids), self.logits_after(ids), state=self.state)


class LlamaCppRunner:
    """One sequence on a llama.cpp context: LCP rollback, sequence-copy and state-copy snapshots.

    The context is taken from the pool at the first pass, not before: exact scoring creates
    runners for passes queued ahead that may never run.
    """

    def __init__(self, backend: "LlamaCppBackend"):
        self.backend = backend
        self._context: _Context | None = None
        self.forward_passes = 0
        self.tokens_fed = 0
        self.cache_rebuilds = 0
        self.state_loads = 0  # snapshots of other contexts loaded instead of re-fed
        self._ids: list[int] = []  # what sequence 0 holds
        self._logits: torch.Tensor | None = None  # logits after self._ids
        self._restored: LlamaSnapshot | None = None  # restored from another context: applied at the next call

    def _own(self, context: _Context) -> _Context:
        self._context = context
        weakref.finalize(self, self.backend._return_context, context)
        return context

    def _ctx(self) -> _Context:
        return self._context if self._context is not None else self._own(self.backend._take_context())

    def next_logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        ids = list(token_ids)
        if not ids:
            raise ValueError("a forward pass needs at least one token; add a BOS token or a prompt")
        if len(ids) > self.backend.n_ctx:
            raise ContextWindowError(
                f"{len(ids)} tokens do not fit the llama.cpp context of {self.backend.n_ctx}; "
                "load the member with a larger n_ctx or shorten the prompt"
            )
        restored, self._restored = self._restored, None
        if restored is not None and restored.logits is not None and tuple(ids) == restored.ids:
            self._restored = restored
            return restored.logits
        if ids == self._ids and self._logits is not None:
            return self._logits
        ctx = self._ctx()
        ctx.free_queued()
        if restored is not None:
            self._load(ctx, restored, ids)
        keep = min(common_prefix_len(self._ids, ids), len(ids) - 1)
        if keep < len(self._ids) and not ctx.remove(0, keep):
            # A memory that cannot drop a tail (recurrent state): start over.
            self.cache_rebuilds += 1
            ctx.remove(0, 0)
            keep = 0
        self._ids = ids[:keep]  # what the cache holds if decoding fails below
        code = ctx.decode(ids[keep:], keep)
        if code == _NO_KV_SLOT:
            ctx.drop_snapshots()
            ctx.remove(0, keep)
            code = ctx.decode(ids[keep:], keep)
        if code != 0:
            ctx.remove(0, keep)
            raise BackendError(
                f"llama.cpp could not decode {len(ids) - keep} tokens at position {keep} (llama_decode returned "
                f"{code}) for {self.backend.source}; if memory is short, load it with a smaller n_ctx"
            )
        self._ids = ids
        self._logits = ctx.last_logits()
        self.forward_passes += 1
        self.tokens_fed += len(ids) - keep
        return self._logits

    def _load(self, ctx: _Context, snapshot: LlamaSnapshot, ids: list[int]) -> None:
        """Sequence 0 := a snapshot's state, if it has one and it shares more with `ids` than the cache does
        (else the cache stays, and the caller re-feeds from the common prefix)."""
        if snapshot.state is None or common_prefix_len(snapshot.ids, ids) <= common_prefix_len(self._ids, ids):
            return
        if ctx.load(snapshot.state, len(snapshot.ids)):
            self._ids, self._logits = list(snapshot.ids), snapshot.logits
            self.state_loads += 1
        else:  # no room (cells held by snapshot sequences) or a failed read: start over, by re-feeding
            ctx.drop_snapshots()
            ctx.remove(0, 0)
            self._ids, self._logits = [], None

    def snapshot(self) -> LlamaSnapshot:
        if self._restored is not None:
            return self._restored  # this runner has not moved since restoring it
        ctx = self._context
        if ctx is None or not self._ids:
            return LlamaSnapshot(tuple(self._ids), self._logits)
        # Another runner (exact mode forks each path onto a new one, in another context) loads the
        # exported state; this runner restores from the sequence copy, without copying any tensor.
        state = ctx.export(0) if self.backend.state_copies else None
        seq = ctx.take_seq()
        if seq is None:
            return LlamaSnapshot(tuple(self._ids), self._logits, state=state)
        ctx.copy(0, seq)
        snap = LlamaSnapshot(tuple(self._ids), self._logits, ctx, ctx.generation, seq, state)
        weakref.finalize(snap, ctx.queue_release, ctx.generation, seq)
        return snap

    def restore(self, snapshot: LlamaSnapshot) -> None:
        ctx = self._context
        self._restored = None
        if ctx is not None and snapshot.context is ctx and snapshot.generation == ctx.generation:
            ctx.remove(0, 0)
            ctx.copy(snapshot.seq, 0)
            self._ids, self._logits = list(snapshot.ids), snapshot.logits
        else:
            # Another context: the next call loads the snapshot's state (in the thread that runs
            # this runner, so no context is ever touched by two threads), or, without one, rolls
            # the cache back to the common prefix and re-feeds the rest.
            self._restored = snapshot


class LlamaCppBackend:
    """A GGUF model loaded by llama.cpp in this process."""

    kind = "llama_cpp"

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int | None = None,
        threads: int | None = None,
        n_batch: int = 512,
        snapshot_seqs: int = DEFAULT_SNAPSHOT_SEQS,
        state_copies: bool | int = True,
        prefill: bool | int = True,
        source: str = "",
    ):
        self.lib = import_llama_cpp()
        from llama_cpp import _internals

        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {str(path)!r} does not exist; check the path")
        _init_backend(self.lib)
        try:
            self.model = _internals.LlamaModel(
                path_model=str(path), params=self.lib.llama_model_default_params(), verbose=False
            )
        except ValueError as exc:
            raise ModelLoadError(f"llama.cpp could not load {str(path)!r} ({exc}); is it a GGUF model file?") from exc
        self.path = path
        self.source = source or str(path)
        self.n_vocab = self.model.n_vocab()
        self.n_ctx = min(n_ctx or DEFAULT_CONTEXT, self.model.n_ctx_train())
        self.n_batch = min(n_batch, self.n_ctx)
        # Subtle: torch's thread count is the one knob the suite and the CLI
        # already pin; llama.cpp would otherwise take every core.
        self.threads = threads or torch.get_num_threads()
        self.snapshot_seqs = min(snapshot_seqs, self.lib.llama_max_parallel_sequences() - 1)
        self.state_copies = bool(state_copies)  # snapshots carry their KV state (restore in another context)
        self.prefill_enabled = bool(prefill)  # exact scoring: one decode over the text's canonical tokens
        self._pool: list[_Context] = []
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def new_runner(self) -> TokenRunner:
        return LlamaCppRunner(self)  # takes a context from the pool at its first pass

    def _take_context(self) -> _Context:
        with self._lock:
            context = self._pool.pop() if self._pool else None
        if context is None:
            return _Context(self)
        context.clear()  # in the taker's thread: stale snapshots of the old runner now load or re-feed
        return context

    def prefill(self, token_ids: Sequence[int]) -> LlamaPrefill | None:
        """One decode over a whole sequence with the logits of every position, and its state.

        Scoring a known text in exact mode owes a pass for every prefix of the text's canonical
        tokens; this serves all of them (see transformers.py's prefill). None where it is off
        (`prefill=0`) or llama.cpp could not decode the sequence: each prefix then has its own pass.
        """
        ids = list(token_ids)
        if not self.prefill_enabled or not ids or len(ids) > self.n_ctx:
            return None
        context = self._take_context()
        try:
            logits = context.decode_all(ids)
            state = context.export(0) if logits is not None and self.state_copies else None
        finally:
            self._return_context(context)
        if logits is None:
            return None
        return LlamaPrefill(ids, logits, state)

    def _return_context(self, context: _Context) -> None:
        # Runs from a finaliser (any thread): only a list operation, no llama.cpp call.
        with self._lock:
            self._pool.append(context)

    def next_logits_batch(self, runners: Sequence[TokenRunner], token_ids: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Each runner decodes in its own context, so distinct runners run in parallel threads
        (ctypes releases the GIL during llama_decode), `threads` cores each, as many as the CPUs hold.

        Not one batched forward pass: that needs the sequences in one context, where a unified
        KV cache makes every token attend over all sequences' cells (see the README).
        """
        workers = min(len(runners), max(1, (os.cpu_count() or 1) // self.threads))
        if workers <= 1 or len({id(r) for r in runners}) < len(runners):
            return loop_batch(runners, token_ids)
        if len(runners) != len(token_ids):
            raise ValueError(f"{len(runners)} runners for {len(token_ids)} id sequences; pass one per runner")
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="llama_cpp")
        futures = [self._executor.submit(r.next_logits, ids) for r, ids in zip(runners[1:], token_ids[1:])]
        first = runners[0].next_logits(token_ids[0])  # this thread works too
        return [first] + [f.result() for f in futures]

    def eos_token_id(self) -> int | None:
        eos = self.lib.llama_vocab_eos(self.model.vocab)
        return int(eos) if eos >= 0 else None

    def metadata(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self.lib.llama_model_meta_val_str(self.model.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "architecture": self.metadata("general.architecture") or "",
            "file": self.path.name,
            "n_ctx": self.n_ctx,
            "threads": self.threads,
            "llama_cpp_python": getattr(self.lib, "__version__", ""),
        }
