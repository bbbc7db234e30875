from __future__ import annotations

import pytest

from chared_flows.records import RunRecord, SampleRecord, VariantSpec


@pytest.fixture
def run_record() -> RunRecord:
    return RunRecord(
        run_id="run-1",
        workflow="math_compare",
        workflow_version=2,
        template="gsm8k_cot",
        template_version=3,
        template_hash="abc123",
        dataset='{"kind": "gsm8k_jsonl", "limit": 50, "path": "data/gsm8k.jsonl"}',
        variants=[
            VariantSpec("smollm2", ("smollm2",)),
            VariantSpec("gemma", ("gemma3",)),
            VariantSpec(
                "chared_0.5", ("smollm2", "gemma3"), (0.5, 0.5), mode="chared", rule="mixture",
                decoding={"max_new_chars": 64, "greedy": True},
                tokenizer_families=("byte_level", "sentencepiece"),
            ),
        ],
        package_version="0.1.0",
        git_commit="deadbeef",
        limit=3,
        n_samples=3,
        dataset_hash="sha256:0123456789abcdef0123",
    )


# Mixed scores, so a mean differs from every single value: the first variant scores
# 1, 1, 0 (mean 0.667), the second 0, 0, 0, the third 0, 1, 0 (and so on, cycling).
SCORES = [(1.0, 1.0, 0.0), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0)]


def make_records(run: RunRecord, n: int = 3) -> list[SampleRecord]:
    out = []
    for v_i, spec in enumerate(run.variants):
        for i in range(n):
            out.append(
                SampleRecord(
                    run_id=run.run_id, workflow=run.workflow, workflow_version=run.workflow_version,
                    template=run.template, template_version=run.template_version,
                    template_hash=run.template_hash, variant=spec.name, sample_id=f"s{i}",
                    inputs={"question": f"What is {i}+{v_i}?"}, output=f"The answer is {i + v_i}.",
                    parsed=i + v_i, reference=i, latency_s=0.5 + i, chars_per_s=20.0,
                    forward_passes=10 + i, scores={"exact_match": SCORES[v_i % 3][i % 3]},
                    prompt=f"Question: What is {i}+{v_i}?\nAnswer:", sample_index=i,
                    timestamp=1_800_000_000.0 + 10 * i,
                    generation={"rounds": 4 + i, "forward_passes": {m: 4 + i for m in spec.members},
                                "prompt_tokens": {m: 9 for m in spec.members},
                                "output_tokens": {m: 5 + i for m in spec.members}},
                )
            )
    return out


@pytest.fixture
def records(run_record) -> list[SampleRecord]:
    return make_records(run_record)
