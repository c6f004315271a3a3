"""Point labels that do not overlap, for the figures that label every point (runner.tables.pareto, plots)."""

from __future__ import annotations


def spread(wanted: list[float], gap: float, low: float, high: float) -> list[float]:
    """1-D label positions near `wanted` (sorted ascending), at least `gap` apart, inside [low, high]: labels
    that would overlap form a block centred on the mean of what they want; blocks merge until none overlap."""
    blocks = [[y] for y in wanted]  # each block: the wanted positions of its labels
    starts = list(wanted)
    merged = True
    while merged:
        merged = False
        for i in range(len(blocks) - 1):
            if starts[i] + gap * len(blocks[i]) > starts[i + 1]:
                blocks[i] += blocks.pop(i + 1)
                starts.pop(i + 1)
                starts[i] = sum(blocks[i]) / len(blocks[i]) - gap * (len(blocks[i]) - 1) / 2
                merged = True
                break
    out = [start + gap * k for start, block in zip(starts, blocks, strict=True) for k in range(len(block))]
    shift = max(0.0, out[-1] - high) if out else 0.0
    out = [y - shift for y in out]
    return [max(y, low + gap * k) for k, y in enumerate(out)]


def place_labels(ax, xy: list[tuple[float, float]], gap: float = 10.0,
                 room: float = 130.0) -> list[tuple[float, float, str]]:
    """(x, y, horizontal alignment) of each point's label, in data coordinates, so that labels do not overlap:
    points closer than 30 px along x form a column, whose labels are spread along y (spread) just right of
    the column, or just left of it when less than `room` px are left before the axes' right edge."""
    to_px, to_data = ax.transData.transform, ax.transData.inverted().transform
    px = [tuple(to_px(p)) for p in xy]
    (_, low), (right_edge, high) = ax.transAxes.transform((0, 0)), ax.transAxes.transform((1, 1))
    order = sorted(range(len(xy)), key=lambda i: px[i][0])
    columns: list[list[int]] = []
    for i in order:
        if columns and px[i][0] - px[columns[-1][0]][0] < 30:
            columns[-1].append(i)
        else:
            columns.append([i])
    out: list[tuple[float, float, str]] = [(0.0, 0.0, "left")] * len(xy)
    for column in columns:
        right = max(px[i][0] for i in column) + 8
        x, align = (right, "left") if right + room < right_edge else (min(px[i][0] for i in column) - 8, "right")
        column.sort(key=lambda i: px[i][1])
        for i, y in zip(column, spread([px[i][1] - 4 for i in column], gap, low, high - gap), strict=True):
            out[i] = (*to_data((x, y)), align)
    return out
