"""Figures of an analysis (analysis.json): the paper's Figure 3 (verb-noun sunburst), Figure 4
(ROUGE-L to the nearest seed) and Figure 5 (lengths). PNGs with matplotlib (written by the analyze
stage into plots/, drawn inline by the notebooks), the interactive sunburst with plotly (W&B)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

TopVerbNouns = Sequence[tuple[str, int, Sequence[tuple[str, int]]]]  # see diversity.top_verb_nouns
PLOT_FILES = ("verb_noun_sunburst.png", "rouge_to_seed_hist.png", "length_hist.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers or in tests
    import matplotlib.pyplot as plt

    return plt


def sunburst_figure(top: TopVerbNouns, title: str = "Top verbs and their direct-object nouns"):
    """Plotly sunburst: verbs inside, their nouns outside, sized by instruction counts."""
    import plotly.graph_objects as go

    ids, labels, parents, values = [], [], [], []
    for verb, _, nouns in top:
        ids.append(verb)
        labels.append(verb)
        parents.append("")
        values.append(sum(c for _, c in nouns))
        for noun, count in nouns:
            ids.append(f"{verb}/{noun}")
            labels.append(noun)
            parents.append(verb)
            values.append(count)
    fig = go.Figure(go.Sunburst(ids=ids, labels=labels, parents=parents, values=values,
                                branchvalues="total", insidetextorientation="radial"))
    fig.update_layout(title=title, margin=dict(t=50, l=0, r=0, b=0), width=700, height=700)
    return fig


def draw_sunburst(ax, top: TopVerbNouns, title: str = "") -> None:
    """The sunburst as a two-ring pie on ax: verbs in the inner ring, their top nouns in the outer
    (a static image, so it shows in files, HTML exports and any notebook front-end)."""
    import matplotlib.pyplot as plt

    if not top:
        ax.text(0.5, 0.5, "no verb-noun pairs", ha="center", va="center")
        ax.axis("off")
    else:
        cmap = plt.get_cmap("tab20")
        inner = [sum(c for _, c in nouns) for _, _, nouns in top]
        outer = [c for _, _, nouns in top for _, c in nouns]
        inner_colors = [cmap(i % 20) for i in range(len(top))]
        outer_colors = [(*cmap(i % 20)[:3], 0.55) for i, (_, _, nouns) in enumerate(top) for _ in nouns]
        total = sum(inner)
        # Wedges too thin for a legible label stay unlabelled.
        outer_labels = [n if c / total > 0.006 else "" for _, _, nouns in top for n, c in nouns]
        inner_labels = [v if s / total > 0.012 else "" for (v, _, _), s in zip(top, inner)]
        ring = dict(width=0.32, edgecolor="white", linewidth=0.8)
        ax.pie(outer, radius=1.0, colors=outer_colors, labels=outer_labels, labeldistance=0.84,
               rotatelabels=True, startangle=90, counterclock=False, wedgeprops=ring,
               textprops=dict(fontsize=8, va="center", ha="center"))
        ax.pie(inner, radius=0.68, colors=inner_colors, labels=inner_labels, labeldistance=0.74,
               rotatelabels=True, startangle=90, counterclock=False, wedgeprops=ring,
               textprops=dict(fontsize=10, weight="bold", va="center", ha="center"))
        ax.set(aspect="equal")
    ax.set_title(title or "Top verbs (inner) and their direct-object nouns (outer)", fontsize=13)


def sunburst_png(top: TopVerbNouns, path: Path, title: str = "") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 10))
    draw_sunburst(ax, top, title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def rouge_hist_png(scores: Sequence[float], path: Path, threshold: float | None = None) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    scores = np.asarray(scores, dtype=float)
    ax.hist(scores, bins=np.linspace(0, 1, 21), color="#4c72b0", edgecolor="white")
    if scores.size:
        ax.axvline(scores.mean(), color="black", linestyle="--", label=f"mean {scores.mean():.3f}")
    if threshold is not None:
        ax.axvline(threshold, color="#c44e52", label=f"filter threshold {threshold:g}")
    ax.set(xlabel="ROUGE-L F1 to the most similar seed instruction", ylabel="instructions",
           title=f"Similarity to the seed tasks ({scores.size} instructions)", xlim=(0, 1))
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def length_hist_png(lengths: dict[str, Sequence[int]], path: Path) -> None:
    """One panel per field: instruction, non-empty input, output lengths in words (Figure 5)."""
    plt = _pyplot()
    panels = [(k, v) for k, v in lengths.items() if len(v)]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 3.6),
                             squeeze=False)
    for ax, (name, values) in zip(axes[0], panels):
        values = np.asarray(values)
        top = max(int(np.percentile(values, 99)), 1)  # a few very long outputs would squash the rest
        width = -(-top // 40)  # whole words per bin, at most 40 bins, edges between integers
        ax.hist(np.minimum(values, top), bins=np.arange(0, top + width + 1, width) - 0.5,
                color="#55a868", edgecolor="white")
        ax.set(title=f"{name.replace('_', ' ')} (mean {values.mean():.1f})", xlabel="words (99th pct. clip)",
               ylabel="count")
    if not panels:
        axes[0][0].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_pngs(analysis: dict, out_dir: Path, threshold: float | None = None) -> list[Path]:
    """All three PNGs of an analysis.json into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    h = analysis["histograms"]
    paths = [out_dir / name for name in PLOT_FILES]
    sunburst_png(analysis["verb_noun_top"], paths[0])
    rouge_hist_png(h["rouge_to_seed"], paths[1], threshold)
    length_hist_png({k: h[k] for k in ("instruction_words", "input_words", "output_words")}, paths[2])
    return paths
