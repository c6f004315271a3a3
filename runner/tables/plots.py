"""Figures declared in expected.csv (`plot`, `x`, `series` columns): ours (mean ± std) against the paper's
points, one PNG per `plot` name, saved next to the table. matplotlib is imported here only (Agg backend).

A line joins points only where there is a curve: a series whose points are one setting swept along one key
(expected sparsity, expert ratio, heads removed). Points of different settings on one axis (ten PEFT methods
against their trainable share) are drawn as separate points, each labelled, with no line between them."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from runner.tables.aggregate import Line


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "plot"


def plot_all(lines: list[Line], out_dir: Path) -> list[Path]:
    by_plot: dict[str, list[Line]] = defaultdict(list)
    for line in lines:
        if line.plot and line.x is not None:
            by_plot[line.plot].append(line)
    return [plot_one(name, points, out_dir) for name, points in by_plot.items()]


def y_metric(lines: list[Line]) -> str:
    """The y axis name: the points' metric, or its stem when each x has its own key (accuracy@0.1,
    accuracy@0.2, ... plot as "accuracy")."""
    names = {line.metric for line in lines}
    if len(names) == 1:
        return names.pop()
    stems = {name.split("@")[0] for name in names}
    return stems.pop() if len(stems) == 1 else "metric"


def log_x(xs: list[float]) -> bool:
    """A log x axis when the points span two decades or more (e.g. 0.04% to 100% of the parameters trained):
    on a linear axis all but the last would sit on top of each other."""
    xs = [x for x in xs if x is not None]
    return bool(xs) and min(xs) > 0 and max(xs) / min(xs) >= 100


def is_curve(points: list[Line]) -> bool:
    """True when the points are one setting swept along at most one key (or one run's metrics at several x)."""
    if len(points) < 2:
        return False
    keys = {k for p in points for k in p.settings}
    differing = [k for k in keys if len({p.settings.get(k) for p in points}) > 1]
    return len(differing) <= 1


def label_points(ax, labelled: list[tuple[Line, float, str]]) -> None:
    """Each (point, y, colour) labelled beside it, spread apart where points crowd (runner.tables.labels).
    Called once the axes are final (scale, limits): labels are placed in pixels."""
    from runner.tables.labels import place_labels

    if not labelled:
        return
    ax.figure.canvas.draw()
    xy = [(p.x, y) for p, y, _ in labelled]
    for (p, _, color), (x, y), (lx, ly, align) in zip(labelled, xy, place_labels(ax, xy), strict=True):
        ax.annotate(p.label, (x, y), xytext=(lx, ly), textcoords="data", fontsize=7, color=color, va="bottom",
                    ha=align,
                    arrowprops={"arrowstyle": "-", "lw": 0.3, "color": color, "shrinkA": 0, "shrinkB": 2})


def plot_one(name: str, lines: list[Line], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    labelled: list[tuple[Line, float, str]] = []  # points of different settings: each gets its label
    series: dict[str, list[Line]] = defaultdict(list)
    for line in lines:
        series[line.series or line.metric].append(line)
    for i, (label, points) in enumerate(series.items()):
        color = f"C{i}"
        points.sort(key=lambda p: p.x)
        curve = is_curve(points)
        ours = [p for p in points if p.mean is not None]
        if ours:
            ax.errorbar([p.x for p in ours], [p.mean for p in ours], yerr=[p.std or 0.0 for p in ours],
                        color=color, marker="o", capsize=3, linestyle="-" if curve else "none",
                        label=f"{label} (ours, n={max(p.n for p in ours)})")
            if not curve:
                labelled += [(p, p.mean, color) for p in ours]
        paper = [p for p in points if p.paper is not None]
        if paper:
            ax.plot([p.x for p in paper], [p.paper for p in paper], color=color, marker="s",
                    linestyle="--" if curve else "none", markerfacecolor="none", label=f"{label} (paper)")
            if not curve and not ours:
                labelled += [(p, p.paper, color) for p in paper]
    first = lines[0]
    if log_x([line.x for line in lines]):
        ax.set_xscale("log")
    ax.set_xlabel(first.x_label or "x")
    metric = y_metric(lines)
    ax.set_ylabel(f"{metric} (% of reference)" if first.relative_to else
                  f"{metric}" + ("" if first.scale == 1 else f" ×{first.scale:g}"))
    ax.set_title(name)
    ax.grid(alpha=0.3)
    if labelled:
        ax.margins(x=0.15)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.14), frameon=False)
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    label_points(ax, labelled)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{slug(name)}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
