"""Pareto frontiers of the cross-method comparison and their plots.

A setting is on the frontier of (% of dense, x) when no other setting is at least as good on both axes and
better on one: higher % of dense, and higher speedup (x maximised) or lower trainable share (x minimised).
Settings without both values are left out of that frontier (and of its plot). The plot draws the frontier
as a line (it is a curve: the best trade found at each x) and every setting as its own labelled point,
coloured by method family; no line joins settings that are not on it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from runner.tables.labels import place_labels
from runner.tables.points import Point

AXES = {  # frontier name -> (x column, maximise x?, axis label, log axis)
    "speed": ("speed_32x128", True, "measured speedup over the dense model, batch 32 × 128", False),
    "trainable": ("trainable_pct", False, "trainable parameters (% of the model)", True),
}


def frontier(xy: Sequence[tuple[float, float]], maximize_x: bool) -> list[int]:
    """Indices of the non-dominated (x, y) pairs, y maximised; x maximised or minimised. Ties (the same
    pair twice) are both kept."""
    sign = 1 if maximize_x else -1
    keep = []
    for i, (x, y) in enumerate(xy):
        dominated = any(sign * x2 >= sign * x and y2 >= y and (sign * x2 > sign * x or y2 > y)
                        for j, (x2, y2) in enumerate(xy) if j != i)
        if not dominated:
            keep.append(i)
    return keep


def mark(points: list[Point]) -> None:
    """Set each point's `frontier` to the names of the frontiers it is on."""
    for name, (column, maximize, _, _) in AXES.items():
        both = [p for p in points if p.value(column) is not None and p.relative[0] is not None]
        for i in frontier([(p.value(column), p.relative[0]) for p in both], maximize):
            both[i].frontier.append(name)


def plot(points: list[Point], name: str, path: Path, title: str) -> Path | None:
    """One frontier's figure; None when no setting has both values. Open markers: an x that holds by
    definition (speedup 1.0 of a deployed dense architecture, trainable 100%), not a measurement."""
    column, maximize, x_label, log = AXES[name]
    both = [p for p in points if p.value(column) is not None and p.relative[0] is not None]
    if not both:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6.5))
    families = list(dict.fromkeys(p.method.split(" (")[0] for p in both))
    colors = [f"C{families.index(p.method.split(' (')[0]) % 10}" for p in both]
    xy = [(p.value(column), p.relative[0]) for p in both]
    for p, color, (x, y) in zip(both, colors, xy, strict=True):
        on, defined = name in p.frontier, "by definition" in p.notes.get(column, "")
        ax.scatter(x, y, s=50 if on else 28, zorder=3, facecolors="none" if defined else color,
                   edgecolors="black" if on else color, linewidths=1.4 if on else 1.0)
    best = sorted((p for p in both if name in p.frontier), key=lambda p: p.value(column))
    ax.plot([p.value(column) for p in best], [p.relative[0] for p in best], color="black", lw=1, zorder=2,
            label="Pareto frontier")
    if log:
        ax.set_xscale("log")
    ax.margins(x=0.12, y=0.06)
    fig.canvas.draw()  # fixes the limits, so that labels can be placed in pixels
    for p, color, (x, y), (lx, ly, align) in zip(both, colors, xy, place_labels(ax, xy, room=20), strict=True):
        ax.annotate(str(p.number), (x, y), xytext=(lx, ly), textcoords="data", fontsize=7, color=color,
                    va="bottom", ha=align, fontweight="bold" if name in p.frontier else "normal",
                    arrowprops={"arrowstyle": "-", "lw": 0.3, "color": color, "shrinkA": 0, "shrinkB": 2})
    for i, family in enumerate(families):
        ax.scatter([], [], color=f"C{i % 10}", label=family)
    ax.scatter([], [], facecolors="none", edgecolors="gray", label="x by definition, not measured")
    ax.set_xlabel(x_label + ("" if maximize else " — fewer is better"))
    ax.set_ylabel("metric, % of its own dense reference")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    names = "\n".join(textwrap.fill(f"{p.number}  {p.name}", 44, subsequent_indent="     ") for p in reversed(best))
    ax.text(1.02, 0.55, f"on the frontier:\n{names}", transform=ax.transAxes, fontsize=7, va="top")
    fig.text(0.01, 0.01, "numbers: the rows of compare.md (bold: on the frontier)", fontsize=7, color="gray")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
