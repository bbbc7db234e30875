"""A generation's numbers as a plain dict: what callers keep about one call.

LangChain puts it in `generation_info`, the workflow runner in its records.
"""

from __future__ import annotations

from typing import Any


def generation_info(result: Any) -> dict[str, Any]:
    """Finish reason, counts and timing of a GenerationResult (JSON-ready)."""
    stats = result.stats
    return {
        "finish_reason": result.finish_reason,
        "chars": stats.chars,
        "rounds": len(result.rounds),
        "wall_time_s": stats.wall_time_s,
        "forward_passes": dict(stats.forward_passes),
        "total_forward_passes": stats.total_forward_passes,
        # Per member: each reads the prompt and the output in its own tokenization.
        "prompt_tokens": dict(getattr(stats, "prompt_tokens", {}) or {}),
        "output_tokens": dict(getattr(stats, "output_tokens", {}) or {}),
        "tokens_fed": dict(getattr(stats, "tokens_fed", {}) or {}),
    }
