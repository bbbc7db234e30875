"""The A/B report as Markdown and HTML, next to its PNG plots and a JSON copy of the numbers.

Input: the run's records, its RunRecord and the A/B result as a plain dict
(`chared_flows.evaluation.ab.compare(...).to_dict()`); nothing else.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from chared_flows.records import RunRecord, SampleRecord
from chared_flows.reports.plots import bpc_by_domain, score_vs_weight


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


_CI_NAMES = {"exact": "exact binomial", "t": "t", "": "n < 2"}


def _direction(ab: dict[str, Any], metric: str) -> str:
    return "lower is better" if metric in ab.get("lower_is_better", []) else "higher is better"


def tables(ab: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every metric: variant means, by domain, then ensemble-vs-single tests."""
    out = []
    for metric in ab["metrics"]:
        direction = _direction(ab, metric)
        rows = [
            [s["variant"], str(s["n"]), _fmt(s["mean"]), f"[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]",
             _CI_NAMES.get(s.get("ci_method", ""), s.get("ci_method", ""))]
            for s in ab["variants"] if s["metric"] == metric
        ]
        out.append((f"{metric}: per variant ({direction})", ["variant", "n", "mean", "95% CI", "CI method"], rows))
        domain_table = _domain_table(ab, metric)
        if domain_table is not None:
            out.append(domain_table)
        pairs = [
            [c["ensemble"], c["single"], str(c["n"]), _fmt(c["diff"]),
             f"[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]", f"{c.get('wins', '-')}/{c.get('losses', '-')}",
             _fmt(c["p_permutation"]), _fmt(c.get("p_sign")), _fmt(c["p_mcnemar"])]
            for c in ab["comparisons"] if c["metric"] == metric
        ]
        if pairs:
            header = ["ensemble", "vs single", "n pairs", "mean diff", "95% paired bootstrap CI", "higher/lower",
                      "p (sign-flip)", "p (sign test)", "p (McNemar)"]
            out.append((f"{metric}: ensemble minus single ({direction})", header, pairs))
    return out


def _domain_table(ab: dict[str, Any], metric: str) -> tuple[str, list[str], list[list[str]]] | None:
    """Per domain: each variant's mean, and the best ensemble against the best single model."""
    stats = [d for d in ab.get("domains", []) if d["metric"] == metric]
    if not stats:
        return None
    singles = {c["single"] for c in ab["comparisons"]}
    ensembles = {c["ensemble"] for c in ab["comparisons"]}
    variants = list(dict.fromkeys(d["variant"] for d in stats))
    lower = metric in ab.get("lower_is_better", [])
    pick = min if lower else max
    rows = []
    for domain in dict.fromkeys(d["domain"] for d in stats):
        means = {d["variant"]: d["mean"] for d in stats if d["domain"] == domain}
        row = [domain] + [_fmt(means.get(v)) for v in variants]
        best_single = pick((means[v], v) for v in means if v in singles) if singles & set(means) else None
        best_ens = pick((means[v], v) for v in means if v in ensembles) if ensembles & set(means) else None
        if best_single and best_ens and best_single[0]:
            change = (best_ens[0] - best_single[0]) / abs(best_single[0])
            row.append(f"{best_ens[1]} vs {best_single[1]}: {change:+.1%}")
        else:
            row.append("-")
        rows.append(row)
    header = ["domain", *variants, "best ensemble vs best single"]
    return f"{metric}: by domain (mean; {'lower' if lower else 'higher'} is better)", header, rows


def _markdown(run: RunRecord, ab: dict[str, Any], plots: list[Path]) -> str:
    lines = [
        f"# A/B report: {run.workflow}@{run.workflow_version}",
        "",
        f"- run: `{run.run_id}`; dataset: `{run.dataset}`; template: `{run.template}@{run.template_version}` "
        f"(`{run.template_hash}`)",
        f"- package {run.package_version or '?'}, commit `{run.git_commit or '?'}`; "
        f"bootstrap resamples: {ab['resamples']}, seed {ab['seed']}",
        "- variants: " + "; ".join(
            f"`{v.name}` = {' + '.join(v.members)}" + (f" @ {v.weights}" if v.weights else "") for v in run.variants
        ),
        "",
    ]
    for title, header, rows in tables(ab):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _html(run: RunRecord, ab: dict[str, Any], plots: list[Path]) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>A/B report: {e(run.workflow)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:.3em .6em}"
        "</style></head><body>",
        f"<h1>A/B report: {e(run.workflow)}@{run.workflow_version}</h1>",
        f"<p>run <code>{e(run.run_id)}</code>, dataset <code>{e(run.dataset)}</code>, template "
        f"<code>{e(run.template)}@{run.template_version}</code>, commit <code>{e(run.git_commit or '?')}</code></p>",
    ]
    for title, header, rows in tables(ab):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    parts += [f"<p><img src='{e(p.name)}' alt='{e(p.stem)}'></p>" for p in plots]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    records: list[SampleRecord], run: RunRecord, ab: dict[str, Any], out_dir: Path
) -> list[Path]:
    """Write report.md, report.html, ab.json and the plots into out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    for metric in ab["metrics"]:
        if metric in ("latency_s", "chars_per_s", "forward_passes"):
            continue
        safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in metric)
        made = score_vs_weight(ab, run.variants, metric, out_dir / f"score_vs_weight_{safe}.png")
        if made:
            plots.append(made)
    bpc = bpc_by_domain(records, out_dir / "bits_per_char_by_domain.png")
    if bpc:
        plots.append(bpc)
    md = out_dir / "report.md"
    md.write_text(_markdown(run, ab, plots), encoding="utf-8")
    page = out_dir / "report.html"
    page.write_text(_html(run, ab, plots), encoding="utf-8")
    numbers = out_dir / "ab.json"
    numbers.write_text(json.dumps(ab, indent=2, default=str), encoding="utf-8")
    return [md, page, numbers, *plots]
