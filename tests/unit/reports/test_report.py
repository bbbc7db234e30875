from __future__ import annotations

from chared_flows.evaluation.ab import compare
from chared_flows.records import RunRecord, SampleRecord, VariantSpec
from chared_flows.reports import write_report

VARIANTS = [VariantSpec("smol", ("smol",)), VariantSpec("gemma", ("gemma",))] + [
    VariantSpec(f"chared_{w}", ("smol", "gemma"), (w, 1 - w)) for w in (0.25, 0.5, 0.75)
]


def records():
    out = []
    for v_i, spec in enumerate(VARIANTS):
        for i in range(8):
            out.append(SampleRecord(
                "r1", "math_code_compare", 1, "t", 1, "h", spec.name, f"s{i}", {"q": i}, "out",
                scores={"exact_match": float((i + v_i) % 3 == 0), "bits_per_char": 1.0 + v_i / 10},
                latency_s=1.0 + v_i, domain="math" if i % 2 else "code",
            ))
    return out


def test_report_files_and_contents(tmp_path):
    run = RunRecord("r1", "math_code_compare", 1, "t", 1, "h", "gsm8k_jsonl", VARIANTS, "0.1.0", "abc")
    recs = records()
    ab = compare(recs, VARIANTS, resamples=200).to_dict()
    paths = write_report(recs, run, ab, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == sorted([
        "report.md", "report.html", "ab.json", "score_vs_weight_exact_match.png",
        "score_vs_weight_bits_per_char.png", "bits_per_char_by_domain.png",
    ])
    for p in paths:
        assert p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert "| chared_0.5 | smol |" in md and "p (McNemar)" in md
    assert "![score_vs_weight_exact_match](score_vs_weight_exact_match.png)" in md
    assert "<table>" in (tmp_path / "report.html").read_text()
    # bits per character: direction, per-domain means and the best ensemble against the best single
    assert "## bits_per_char: per variant (lower is better)" in md
    assert "## bits_per_char: by domain (mean; lower is better)" in md
    assert "| code | 1.0000 | 1.1000 | 1.2000 | 1.3000 | 1.4000 | chared_0.25 vs smol: +20.0% |" in md
    assert "| exact_match: per variant (higher is better)" not in md and "exact binomial" in md
