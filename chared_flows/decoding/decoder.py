"""The CharED loop: members decode one text together.

mode="chared" (the paper): a round is one forward pass per member on the text so
far, each member tokenizing it its own canonical way; inside the round the
members' next-byte distributions (rounds.py) are combined by the ensemble's rule
and the round writes bytes until END (a token ends) or EOS.

mode="exact" (exact.py): each member keeps a beam of tokenizations and its
next-byte distribution is summed over them; there are no rounds.

What is written (search.py): greedy writes the most probable *unit* (in chared
mode the round's most probable string; in exact mode the most probable way the
members' current tokens end); sampling draws one byte at a time (exact by the
chain rule), or whole characters from the nucleus when top_p < 1.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from chared_flows.decoding.batching import DEFAULT_BATCH_SIZE, run_concurrently
from chared_flows.decoding.cancel import CancelToken, cancel_requested, cancellable
from chared_flows.decoding.combine import RULE_FUNCTIONS, normalise_weights
from chared_flows.decoding.config import DecodeConfig
from chared_flows.decoding.generation import (
    FINISH_REASONS,
    Generation,
    GenerationResult,
    GenerationStats,
    StreamingGeneration,
)
from chared_flows.decoding.members import Member
from chared_flows.decoding.scoring import ScoreResult, score_chared, score_exact
from chared_flows.decoding.text import check_prompt, check_text
from chared_flows.errors import ConfigError

__all__ = [
    "FINISH_REASONS", "CancelToken", "Ensemble", "GenerationResult", "GenerationStats", "StreamingGeneration",
    "cancel_requested", "cancellable",
]


class Ensemble:
    """N >= 1 members decoding one text together, under one DecodeConfig.

    A prompt is a str (raw text, or one user turn for members with chat=True)
    or a list of {"role", "content"} messages, which every member renders with
    its own chat template.

    `Ensemble(members, config)` or `Ensemble(members, weights=..., mode=...)`:
    keyword arguments are DecodeConfig fields (config.py) and override `config`.
    Per call, `generate(prompt, max_new_chars=..., temperature=...)` overrides again.
    """

    def __init__(self, members: Sequence[Member], config: DecodeConfig | None = None, **overrides: Any):
        members = list(members)
        for i, m in enumerate(members):
            if not isinstance(m, Member):
                raise ConfigError(f"member {i} is a {type(m).__name__}; pass Member objects (Member.load(spec))")
        base = config if config is not None else DecodeConfig()
        if not isinstance(base, DecodeConfig):
            raise ConfigError(f"config is a {type(base).__name__}; pass a DecodeConfig")
        self.config = base.replace(**overrides)
        self.weights = normalise_weights(self.config.weights, len(members))
        self.members = members
        self.combine = RULE_FUNCTIONS[self.config.rule]
        self.names = _unique_names([m.name for m in members])

    # Read-only views of the config, for callers of the earlier API.
    mode = property(lambda self: self.config.mode)
    rule = property(lambda self: self.config.rule)
    beam_width = property(lambda self: self.config.beam_width)
    prune_threshold = property(lambda self: self.config.prune_threshold)
    token_healing = property(lambda self: self.config.token_healing)

    def score(self, prompt, continuation: str) -> ScoreResult:
        """Log-probability of each byte of `continuation` after `prompt` under this ensemble.

        Exact mode: the byte's probability summed over all tokenizations (up to
        pruning). Chared mode: the probability that the chared procedure writes
        these bytes, summed over where its rounds could end (scoring.py).
        """
        check_text(continuation, "continuation")
        if not continuation:
            # 0 bits over 0 characters has no rate: NaN would poison every mean it joins
            raise ConfigError("continuation is empty; score at least one character (bits per char of nothing is undefined)")
        check_prompt(prompt)
        if self.config.mode == "exact":
            return score_exact(self, prompt, continuation)
        return score_chared(self, prompt, continuation)

    def generate(self, prompt, config: DecodeConfig | None = None, **overrides: Any) -> GenerationResult:
        return Generation(self, prompt, self._call_config(config, overrides)).drain()

    def stream(self, prompt, config: DecodeConfig | None = None, **overrides: Any) -> Iterator[str]:
        """Yield text as it is decided; text that may start a stop string is held back until it cannot."""
        return iter(self.start_stream(prompt, config, **overrides))

    def start_stream(self, prompt, config: DecodeConfig | None = None, **overrides: Any) -> "StreamingGeneration":
        """Like stream(), but the returned object also holds `.result` once exhausted."""
        return StreamingGeneration(Generation(self, prompt, self._call_config(config, overrides)))

    def generate_batch(
        self, prompts: Sequence[Any], config: DecodeConfig | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
        **overrides: Any,
    ) -> list[GenerationResult]:
        """Decode many prompts at once; results in the order of `prompts`.

        Up to `batch_size` decodings run concurrently, each in its own thread; their
        forward passes meet in the members' schedulers and run as one batched forward
        per member per step (scheduler.py). Each decoding is exactly the one `generate`
        would run (its own sessions, caches and random generator), so outputs equal
        unbatched decoding up to the float rounding of a batched matrix product.
        """
        return [result for _, result in sorted(self._run_many(prompts, config, batch_size, overrides, stream=False))]

    def stream_batch(
        self, prompts: Sequence[Any], config: DecodeConfig | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
        **overrides: Any,
    ) -> Iterator[tuple[int, str]]:
        """Like generate_batch, but yield (prompt index, text chunk) as each decoding decides text."""
        for index, chunk in self._run_many(prompts, config, batch_size, overrides, stream=True):
            if chunk:
                yield index, chunk

    def _run_many(self, prompts, config, batch_size: int, overrides: dict, stream: bool) -> Iterator[tuple[int, Any]]:
        if isinstance(prompts, str):
            raise ConfigError("generate_batch takes a list of prompts; for one prompt use generate()")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size is {batch_size!r}; it must be an integer >= 1")
        call = self._call_config(config, overrides)
        runs = [Generation(self, prompt, call) for prompt in prompts]  # every prompt checked before any decoding
        yield from run_concurrently(runs, batch_size, stream)

    def _call_config(self, config: DecodeConfig | None, overrides: dict[str, Any]) -> DecodeConfig:
        if "stop" in overrides and overrides["stop"] is None:
            overrides["stop"] = ()
        call = (config or self.config).replace(**overrides)
        if call.ensemble_fields() != self.config.ensemble_fields():
            changed = sorted(k for k, v in call.ensemble_fields().items() if self.config.ensemble_fields()[k] != v)
            raise ConfigError(
                f"{', '.join(changed)} describe the ensemble, not one call; build an Ensemble with them instead"
            )
        return call


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out
