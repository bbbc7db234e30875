from __future__ import annotations

from pathlib import Path

import pytest

from chared_flows.errors import ConfigError
from chared_flows.evaluation import Sample, get_scorer, load_dataset
from chared_flows.evaluation.scorers import extract_number
from chared_flows.records import SampleRecord

GSM8K = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "gsm8k" / "test.jsonl"


def test_gsm8k_jsonl_reads_question_and_final_answer():
    if not GSM8K.is_file():
        pytest.skip(f"{GSM8K} absent")
    samples = load_dataset({"kind": "gsm8k_jsonl", "path": str(GSM8K), "limit": 5})
    assert len(samples) == 5
    assert samples[0].id == "gsm8k-0"
    assert "Janet" in samples[0].inputs["question"]
    assert samples[0].reference == "18"
    assert all(s.domain == "math" for s in samples)


def test_gsm8k_jsonl_with_commas_and_missing_file(tmp_path):
    f = tmp_path / "g.jsonl"
    f.write_text('{"question": "q?", "answer": "so\\n#### 1,234"}\n\n')
    assert load_dataset({"kind": "gsm8k_jsonl", "path": str(f)})[0].reference == "1234"
    with pytest.raises(ConfigError, match="gsm_symbolic"):
        load_dataset({"kind": "gsm8k_jsonl", "path": str(tmp_path / "nope.jsonl")})
    f.write_text('{"q": 1}\n')
    with pytest.raises(ConfigError, match="g.jsonl:1"):
        load_dataset({"kind": "gsm8k_jsonl", "path": str(f)})


def test_gsm_symbolic_is_offline_and_deterministic():
    a = load_dataset({"kind": "gsm_symbolic", "n": 3, "seed": 7})
    b = load_dataset({"kind": "gsm_symbolic", "n": 3, "seed": 7})
    assert a == b and len(a) == 3
    assert all(s.reference.lstrip("-").replace(".", "").isdigit() for s in a)


def test_humaneval_limit():
    samples = load_dataset({"kind": "humaneval", "limit": 3})
    assert [s.id for s in samples] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert samples[0].reference["entry_point"] == "has_close_elements"
    assert samples[0].domain == "code"


def test_text_chunks(tmp_path):
    (tmp_path / "wiki.txt").write_text("abcdefghij" * 3 + "😀")
    samples = load_dataset({"kind": "text", "path": str(tmp_path / "wiki.txt"), "chunk_chars": 10})
    assert [s.inputs["text"] for s in samples][-1] == "😀"
    assert all(s.reference == s.inputs["text"] for s in samples)  # what bits_per_char scores
    assert len(samples) == 4 and samples[0].domain == "wiki"


@pytest.mark.parametrize(
    "text, want",
    [
        ("The answer is 18.", "18"),
        ("She makes $1,234 per day.", "1234"),
        ("first 3 then 42", "42"),
        ("#### 7\nlater 9", "7"),
        ("It costs $18.00.", "18"),
        ("negative: -5", "-5"),
        ("no number", None),
        ("0.5 of it", "0.5"),
    ],
)
def test_extract_number(text, want):
    assert extract_number(text) == want


def test_numeric_exact_match_uses_parsed_when_given():
    scorer = get_scorer("numeric_exact_match")
    sample = Sample("1", {"question": "q"}, reference="1,000")
    assert scorer.score(sample, "It is $1,000.", None) == {"exact_match": 1.0}
    assert scorer.score(sample, "garbage", "1000") == {"exact_match": 1.0}
    assert scorer.score(sample, "It is 999.", None) == {"exact_match": 0.0}


def test_latency_is_no_scorer_every_record_carries_it():
    with pytest.raises(ConfigError, match="unknown scorer 'latency'"):
        get_scorer("latency")
    record = SampleRecord("r", "w", 1, "t", 1, "h", "v", "s", {}, "o", latency_s=2.0, chars_per_s=5.0,
                          forward_passes=7, scores={"exact_match": 1.0})
    assert (record.latency_s, record.chars_per_s, record.forward_passes) == (2.0, 5.0, 7)


def test_unknown_scorer_lists_known():
    with pytest.raises(ConfigError, match="numeric_exact_match"):
        get_scorer("bleu")


def test_gsm8k_path_expands_environment_variables(tmp_path, monkeypatch) -> None:
    from chared_flows.evaluation.datasets import gsm8k_jsonl

    (tmp_path / "g.jsonl").write_text('{"question": "1+1?", "answer": "2 #### 2"}\n')
    monkeypatch.setenv("MY_GSM8K_DIR", str(tmp_path))
    assert [s.reference for s in gsm8k_jsonl("$MY_GSM8K_DIR/g.jsonl")] == ["2"]
