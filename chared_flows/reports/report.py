"""The A/B report as Markdown and HTML, next to its PNG plots and a JSON copy of the numbers.

Input: the run's records, its RunRecord and the A/B result as a plain dict
(`chared_flows.evaluation.ab.compare(...).to_dict()`); nothing else.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from chared_flows.records import TIMINGS, RunRecord, SampleRecord
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


def _interval(low: Any, high: Any) -> str:
    return f"[{_fmt(low)}, {_fmt(high)}]"


def _p(value: Any) -> str:
    if not isinstance(value, float) or value != value:
        return "-"
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def _verdict_text(c: dict[str, Any]) -> str:
    """'better (p_holm 0.003)', or 'no detectable difference (p_holm 0.41; detectable at this n: 0.12; ...)'."""
    text = f"{c['verdict']} (p_holm {_p(c['p_holm'])}"
    if c["verdict"] == "no detectable difference":
        if c.get("mde") is not None:
            text += f"; detectable at n={c['n']}: {_fmt(c['mde'])}"
        if c.get("n_needed") is not None and c.get("effect"):
            text += f"; n for {_fmt(c['effect'])}: {c['n_needed']}"
    return text + ")"


def verdict_rows(ab: dict[str, Any]) -> list[list[str]]:
    """The decision table: per metric and variant, its mean with interval; per ensemble, its
    difference from the best single model (interval from the same test as p) and the verdict."""
    rows = []
    metrics = [m for m in ab["metrics"] if m not in TIMINGS] + [m for m in ab["metrics"] if m in TIMINGS]
    for metric in metrics:
        versus = {c["ensemble"]: c for c in ab["comparisons"] if c["metric"] == metric and c["vs_best_single"]}
        best = next(iter(versus.values()))["single"] if versus else None
        for s in (s for s in ab["variants"] if s["metric"] == metric):
            c = versus.get(s["variant"])
            if c is not None:
                diff = f"{c['diff']:+.4f} {_interval(c['ci_low'], c['ci_high'])} vs {best}"
                verdict = _verdict_text(c)
            else:
                diff, verdict = ("best single" if s["variant"] == best else "-"), "-"
            rows.append([s["variant"], metric, f"{_fmt(s['mean'])} {_interval(s['ci_low'], s['ci_high'])}",
                         diff, verdict])
    return rows


VERDICT_HEADER = ["variant", "metric", "mean [95% CI]", "difference vs best single [95% CI]", "verdict"]


def verdict_table_text(ab: dict[str, Any]) -> str:
    """The decision table as aligned plain text (what `chared ab` prints last)."""
    rows = [VERDICT_HEADER, *verdict_rows(ab)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(VERDICT_HEADER) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _method_note(ab: dict[str, Any]) -> str:
    families = "; ".join(f"{k}: {', '.join(v)}" for k, v in ab.get("families", {}).items())
    return (f"Each difference's interval and p-value come from one test (paired t; exact McNemar for 0/1 "
            f"metrics, its interval the inverted binomial test), so a 95% interval excludes 0 exactly when "
            f"p < {ab.get('alpha', 0.05)}. Verdicts use Holm-corrected p (families: {families}). "
            f"'detectable at n' is the smallest difference this n detects with power {ab.get('power', 0.8)}; "
            f"'n for X' the pairs a difference of X needs (t approximation for 0/1 metrics).")


def _batch_note(ab: dict[str, Any]) -> str:
    sizes = ab.get("batch_sizes") or {}
    if not sizes:
        return "Timings: batch size not recorded."
    shown = ", ".join(f"{v}: {'/'.join(map(str, b))}" for v, b in sizes.items())
    return ("Batches never mix variants; pairs per batch: "
            f"{shown}. Timings are compared on the pairs that decoded alone (batch 1) where a variant has any.")


def tables(ab: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows): the verdicts, then per metric: variant means, by domain, every comparison."""
    out = [("Verdicts: each ensemble against the best single model", VERDICT_HEADER, verdict_rows(ab))]
    for metric in ab["metrics"]:
        direction = _direction(ab, metric)
        rows = [
            [s["variant"], str(s["n"]), _fmt(s["mean"]), _interval(s["ci_low"], s["ci_high"]),
             _CI_NAMES.get(s.get("ci_method", ""), s.get("ci_method", ""))]
            for s in ab["variants"] if s["metric"] == metric
        ]
        out.append((f"{metric}: per variant ({direction})", ["variant", "n", "mean", "95% CI", "CI method"], rows))
        domain_table = _domain_table(ab, metric)
        if domain_table is not None:
            out.append(domain_table)
        pairs = [
            [c["ensemble"], c["single"], str(c["n"]), _fmt(c["diff"]), _interval(c["ci_low"], c["ci_high"]),
             f"{c.get('wins', '-')}/{c.get('losses', '-')}", c["method"] or "-", _p(c["p_value"]),
             _p(c["p_holm"]), c["verdict"], _fmt(c.get("mde")),
             f"{c['n_needed']} for {_fmt(c['effect'])}" if c.get("n_needed") else "-"]
            for c in ab["comparisons"] if c["metric"] == metric
        ]
        if pairs:
            header = ["ensemble", "vs single", "n pairs", "mean diff", "95% CI", "higher/lower", "test", "p",
                      "p (Holm)", "verdict", "detectable at this n", "n needed"]
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
        f"- package {run.package_version or '?'}, commit `{run.git_commit or '?'}`",
        "- variants: " + "; ".join(
            f"`{v.name}` = {' + '.join(v.members)}" + (f" @ {v.weights}" if v.weights else "") for v in run.variants
        ),
        f"- {_method_note(ab)}",
        f"- {_batch_note(ab)}",
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
        f"<p>{e(_method_note(ab))}</p><p>{e(_batch_note(ab))}</p>",
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
        if metric in TIMINGS:
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
