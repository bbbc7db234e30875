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
    ab = compare(recs, VARIANTS).to_dict()
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
    assert "| chared_0.5 | smol |" in md and "exact McNemar" in md and "p (Holm)" in md
    # the report opens with the verdicts, in Markdown and in HTML
    assert md.split("\n## ")[1].startswith("Verdicts: each ensemble against the best single model")
    html = (tmp_path / "report.html").read_text()
    assert html.index("<h2>Verdicts") < html.index("<h2>exact_match")
    assert "| chared_0.5 | bits_per_char |" in md and "vs smol" in md and "(p_holm " in md
    assert "![score_vs_weight_exact_match](score_vs_weight_exact_match.png)" in md
    assert "<table>" in (tmp_path / "report.html").read_text()
    # bits per character: direction, per-domain means and the best ensemble against the best single
    assert "## bits_per_char: per variant (lower is better)" in md
    assert "## bits_per_char: by domain (mean; lower is better)" in md
    assert "| code | 1.0000 | 1.1000 | 1.2000 | 1.3000 | 1.4000 | chared_0.25 vs smol: +20.0% |" in md
    assert "| exact_match: per variant (higher is better)" not in md and "exact binomial" in md


def test_a_mixture_and_a_product_sweep_are_two_labelled_series(tmp_path, monkeypatch):
    from chared_flows.reports import plots

    variants = [VariantSpec("smol", ("smol",))] + [
        VariantSpec(f"{rule}_{w}", ("smol", "gemma"), (w, 1 - w), rule=rule)
        for rule in ("mixture", "product") for w in (0.25, 0.75)
    ]
    recs = [SampleRecord("r1", "w", 1, "t", 1, "h", v.name, f"s{i}", {}, "", scores={"bits_per_char": 1.0 + i})
            for v in variants for i in range(3)]
    labels = []
    real = plots._pyplot

    def spy():
        plt = real()
        original = plt.Axes.errorbar

        def errorbar(self, *args, **kwargs):
            labels.append(kwargs.get("label"))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(plt.Axes, "errorbar", errorbar)
        return plt

    monkeypatch.setattr(plots, "_pyplot", spy)
    ab = compare(recs, variants).to_dict()
    assert plots.score_vs_weight(ab, variants, "bits_per_char", tmp_path / "p.png")
    assert labels == ["smol + gemma (mixture)", "smol + gemma (product)"]  # mode unset: the engine's default
