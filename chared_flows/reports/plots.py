"""PNG plots with matplotlib's Agg backend (no display, safe in threads and CI)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from chared_flows.records import SampleRecord, VariantSpec


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # subtle: before pyplot is imported, or a GUI backend may be picked
    import matplotlib.pyplot as plt

    return plt


def score_vs_weight(ab: dict[str, Any], variants: list[VariantSpec], metric: str, path: Path) -> Path | None:
    """Ensemble score against the weight of its first member; singles as horizontal lines."""
    stats = {s["variant"]: s for s in ab["variants"] if s["metric"] == metric}
    # subtle: one series per members, rule and mode: a mixture and a product sweep of the
    # same members are two curves, drawn as one zig-zag line when keyed by members alone.
    sweeps: dict[tuple[tuple[str, ...], str, str], list[tuple[float, dict]]] = defaultdict(list)
    for spec in variants:
        if not spec.is_single and spec.weights and spec.name in stats:
            key = (spec.members, spec.rule, spec.mode)
            sweeps[key].append((spec.weights[0] / sum(spec.weights), stats[spec.name]))
    if not sweeps:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (members, rule, mode), points in sweeps.items():
        points.sort(key=lambda p: p[0])
        xs = [x for x, _ in points]
        ys = [s["mean"] for _, s in points]
        err = [[s["mean"] - s["ci_low"] for _, s in points], [s["ci_high"] - s["mean"] for _, s in points]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{' + '.join(members)} ({', '.join(x for x in (rule, mode) if x) or 'defaults'})")
    for i, spec in enumerate(v for v in variants if v.is_single and v.name in stats):
        ax.axhline(stats[spec.name]["mean"], linestyle="--", color=f"C{i + 1}", label=f"{spec.name} alone")
    first = next(iter(sweeps))[0][0]
    ax.set_xlabel(f"weight on {first}")
    ax.set_ylabel(metric)
    ax.set_xlim(-0.05, 1.05)
    ax.legend(fontsize=8)
    ax.set_title(f"{metric} vs ensemble weight (95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def bpc_by_domain(records: list[SampleRecord], path: Path, metric: str = "bits_per_char") -> Path | None:
    """Grouped bars: mean bits per character per domain, one bar per variant."""
    sums: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in records:
        if metric in r.scores and not r.error:
            sums[(r.domain or "all", r.variant)].append(r.scores[metric])
    if not sums:
        return None
    domains = sorted({d for d, _ in sums})
    names = sorted({v for _, v in sums})
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(domains)), 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        heights = [sum(sums.get((d, name), [0])) / max(1, len(sums.get((d, name), []))) for d in domains]
        ax.bar([j + i * width for j in range(len(domains))], heights, width, label=name)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(domains))], domains)
    ax.set_ylabel(f"{metric} (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
