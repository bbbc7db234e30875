"""One MLflow trace per generation: the call window, prompt and output, one span per member.

The trace carries members, weights, mode, rule, rounds and tokens per member, and is
linked to the variant's child run; its `chared.sample_id` tag lets a resume find it again.
"""

from __future__ import annotations

from typing import Any

from chared_flows.records import SampleRecord, VariantSpec
from chared_flows.tracking.mlflow.client import _global_tracking_uri

_PER_MEMBER = ("prompt_tokens", "output_tokens", "forward_passes", "tokens_fed")


def log_trace(client: Any, tracking_uri: str, experiment_id: str, run_id: str, record: SampleRecord,
              spec: VariantSpec) -> None:
    """One trace for `record`, in the store at `tracking_uri`, linked to the run `run_id`."""
    gen = record.generation or {}
    start_ns = int((record.timestamp - record.latency_s) * 1e9)
    end_ns = max(int(record.timestamp * 1e9), start_ns)
    names = list(gen.get("output_tokens") or gen.get("forward_passes") or spec.members)
    weights = list(spec.weights) if spec.weights else [1.0 / len(spec.members)] * len(spec.members)
    tags = {"chared.run_id": record.run_id, "chared.variant": record.variant, "chared.sample_id": record.sample_id}
    with _global_tracking_uri(tracking_uri):
        root = client.start_trace(
            "chared.generate", span_type="LLM", inputs={"prompt": record.prompt, "inputs": record.inputs},
            attributes=_trace_attributes(record, spec, weights), tags=tags, experiment_id=experiment_id,
            start_time_ns=start_ns, run_id=run_id,
        )
        for i, member in enumerate(names):
            attributes = {"chared.weight": weights[i] if i < len(weights) else None,
                          **{f"chared.{k}": (gen.get(k) or {}).get(member) for k in _PER_MEMBER}}
            span = client.start_span(f"member {member}", trace_id=root.trace_id, parent_id=root.span_id,
                                     span_type="LLM", start_time_ns=start_ns, attributes=attributes)
            client.end_span(root.trace_id, span.span_id, end_time_ns=end_ns)
        client.end_trace(
            root.trace_id, outputs={"output": record.output, "parsed": None if record.parsed is None else str(record.parsed)},
            end_time_ns=end_ns,
        )


def _trace_attributes(record: SampleRecord, spec: VariantSpec, weights: list[float]) -> dict[str, Any]:
    """The whole generation's attributes, on the trace's root span."""
    gen = record.generation or {}
    return {
        "chared.members": list(spec.members), "chared.weights": weights, "chared.mode": spec.mode,
        "chared.rule": spec.rule, "chared.rounds": gen.get("rounds"), "chared.finish_reason": record.finish_reason,
        "chared.forward_passes": gen.get("forward_passes", {}), "chared.prompt_tokens": gen.get("prompt_tokens", {}),
        "chared.output_tokens": gen.get("output_tokens", {}), "chared.chars_per_s": record.chars_per_s,
    }
