"""One comparison across methods for a task: accuracy vs measured speedup vs trainable share, with the Pareto
frontiers.

    python -m runner.tables.compare [FOLDERS ...] [--task glue/sst2] [--model minilm] [--out DIR]

FOLDERS: recipe folders (recipes/<paper>: the recipe's runs here, else its committed results/), a folder of
recipes (recipes/), or folders of runs (outputs/: every setting found, the runs of the recipes read here left
to their recipe). Default: outputs/ and recipes/. One row per method setting (seeds aggregated, mean ± std):
method, setting, where its numbers come from, metric, % of its own dense reference and which one, measured
speedup at 1×64 and 32×128, parameters, trainable %, size on disk, training time, and the frontiers it is on
(speed: % of dense vs speedup at 32×128; trainable: % of dense vs trainable %). Writes compare.md, .csv,
.tex, compare-speed.png, compare-trainable.png and compare.html (table and plots inline: opens from disk,
no network) into --out (default outputs/compare/<task>/). How each value is obtained: runner/tables/points.py.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import sys
from pathlib import Path

from runner.errors import UserError
from runner.tables.aggregate import fmt
from runner.tables.collect import collect
from runner.tables.facts import FACTS
from runner.tables.pareto import AXES, mark, plot
from runner.tables.points import Point, recipe_points, run_points
from runner.tables.table import EXPECTED, is_recipe, make_table

DEFAULT_FOLDERS = ("outputs", "recipes")
HEAD = ["#", "method", "setting", "source", "metric", "% of dense", "dense reference", "speedup 1×64",
        "speedup 32×128", "parameters", "trainable %", "size (MB)", "train (s)", "frontier"]
COLUMNS = {"speed_1x64": "speedup 1×64", "speed_32x128": "speedup 32×128", "parameters": "parameters",
           "trainable_pct": "trainable %", "size_mb": "size (MB)", "train_s": "train (s)",
           "relative": "% of dense", "metric": "metric"}


def split_folders(folders: list[Path]) -> tuple[list[Path], list[Path]]:
    """(recipe folders, run folders) among the arguments; a folder of recipes stands for each of them."""
    recipes, runs = [], []
    for folder in folders:
        if not folder.is_dir():
            raise UserError(f"{folder}: no such folder; pass run folders (outputs/) or recipe folders (recipes/<paper>)")
        if is_recipe(folder) and (folder / EXPECTED).exists():
            recipes.append(folder)
        elif inner := sorted(d for d in folder.iterdir() if (d / EXPECTED).exists()):
            recipes += inner
        else:
            runs.append(folder)
    return recipes, runs


def gather(folders: list[Path], task: str | None, model: str | None,
           not_run: list[tuple[str, str]] | None = None) -> list[Point]:
    """The points of every folder, numbered, with their frontiers marked; recipe settings declared but never
    run (and not committed) are appended to not_run as (name, command)."""
    recipes, run_folders = split_folders(folders)
    points, covered = [], set()
    for recipe in recipes:
        table = make_table(recipe, write=False)  # its runs here, else its committed results/
        covered |= {root.resolve() for root in table.found.roots}
        points += recipe_points(table.lines, recipe.resolve().name, task, model, not_run)
    for folder in run_folders:
        found = collect([folder], exclude=frozenset(covered))
        points += run_points(found, str(folder), task, model)
    tasks = sorted({p.task for p in points})
    if task is None and len(tasks) > 1:
        raise UserError(f"settings of {len(tasks)} tasks found ({', '.join(tasks)}); pass --task, e.g. --task {tasks[0]}")
    for number, point in enumerate(points, 1):
        point.number = number
    mark(points)
    return points


def cell(point: Point, column: str) -> str:
    """A number with its spread where there is one; † when it is not measured (a note says why)."""
    if column in ("metric", "relative"):
        mean, std, _ = point.metric if column == "metric" else point.relative
        text = "—" if mean is None else fmt(mean) + (f" ± {fmt(std)}" if std is not None else "")
    else:
        value = point.value(column)
        small = column == "trainable_pct" and value is not None and value < 1  # 0.048% of the weights
        digits = 3 if small else 1 if column in ("size_mb", "train_s", "trainable_pct") else 2
        text = "—" if value is None else fmt(value, digits)
    return text + ("†" if point.value(column) is not None and column in point.notes else "")


def rows(points: list[Point]) -> list[list[str]]:
    return [[str(p.number), p.method, p.name + (f" ({p.keys})" if p.keys else ""), p.source, cell(p, "metric"),
             cell(p, "relative"), p.reference or "—", *(cell(p, k) for k in FACTS),
             ", ".join(p.frontier)] for p in points]


def notes(points: list[Point]) -> list[str]:
    """One line per (column, note): the settings it applies to."""
    grouped: dict[tuple[str, str], list[int]] = {}
    for p in points:
        for column, note in p.notes.items():
            grouped.setdefault((column, note), []).append(p.number)
    return [f"{COLUMNS.get(col, col)} of #{', #'.join(map(str, nums))}: {note}" for (col, note), nums in grouped.items()]


def markdown(title: str, points: list[Point], not_run: list[tuple[str, str]] = ()) -> str:
    from runner.tables.render import table

    out = [f"## {title}", "", f"{len(points)} setting(s). % of dense: the metric over its own dense reference "
           "(per seed where both have the seed). Frontier: Pareto-optimal in % of dense and speedup at 32×128 "
           "(`speed`) or trainable % (`trainable`, fewer is better). †: not measured on the setting's own runs "
           "(true by definition, derived, or shared with a setting of the same shape): see the notes.", ""]
    out += table(HEAD, rows(points))
    out += ["", "Notes (how a value was obtained, why a cell is empty):", *(f"- {n}" for n in notes(points))]
    commands = [p for p in points if p.command]
    if commands:
        out += ["", "Re-run a setting:", *(f"- #{p.number}: `{p.command}`" for p in commands)]
    if not_run:
        out += ["", "Declared by a recipe, with no run here and nothing committed:",
                *(f"- {name}: `{command}`" for name, command in not_run)]
    return "\n".join(out) + "\n"


def write_csv(path: Path, points: list[Point]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["number", "method", "setting", "keys", "task", "model", "source", "metric",
                         "metric_mean", "metric_std", "n", "relative_mean", "relative_std", "reference", *FACTS,
                         "frontier", "notes", "command"])
        for p in points:
            writer.writerow([p.number, p.method, p.name, p.keys, p.task, p.model, p.source, p.metric_name,
                             *(_num(v) for v in (*p.metric[:2], p.metric[2], *p.relative[:2])), p.reference,
                             *(_num(p.values.get(k)) for k in FACTS), " ".join(p.frontier),
                             "; ".join(f"{k}: {v}" for k, v in p.notes.items()), p.command])


def _num(value) -> str:
    return "" if value is None else repr(value)


def latex(title: str, points: list[Point]) -> str:
    from runner.tables.render import tex

    out = [f"% {tex(title)}: generated by `python -m runner.tables.compare`; needs \\usepackage{{booktabs}}",
           r"\begin{tabular}{rllrrrrrl}", r"\toprule",
           r"\# & Method & Setting & Metric & \% of dense & 1$\times$64 & 32$\times$128 & Trainable \% & Frontier \\",
           r"\midrule"]
    for row in rows(points):
        out.append(" & ".join(tex(c) for c in (row[0], row[1], row[2], row[4], row[5], row[7], row[8], row[10],
                                                 row[13])) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def page(title: str, points: list[Point], plots: list[Path]) -> str:
    """compare.html: the table, the notes and the plots inline (base64), so it opens from disk alone."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in HEAD)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows(points))
    images = "".join(f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,'
                     f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{esc(p.name)}</figcaption></figure>'
                     for p in plots)
    items = "".join(f"<li>{esc(n)}</li>" for n in notes(points))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
            "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}th{background:#eee}"
            "img{max-width:100%}figure{display:inline-block;margin:1em 1em 0 0;max-width:48%}</style></head><body>"
            f"<h2>{esc(title)}</h2>{images}<table><tr>{head}</tr>{body}</table>"
            f"<p>†: not measured on the setting's own runs; see the notes.</p><ul>{items}</ul></body></html>\n")


def write_all(points: list[Point], title: str, out: Path, not_run: list[tuple[str, str]] = ()) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "compare.md", out / "compare.csv", out / "compare.tex"]
    files[0].write_text(markdown(title, points, not_run))
    write_csv(files[1], points)
    files[2].write_text(latex(title, points))
    plots = [path for name in AXES if (path := plot(points, name, out / f"compare-{name}.png",
                                                    f"{title}: % of dense vs {name} (Pareto frontier)"))]
    (out / "compare.html").write_text(page(title, points, plots))
    return [*files, *plots, out / "compare.html"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.tables.compare",
                                     description="Every method setting of a task in one table: metric, % of its "
                                                 "dense reference, measured speedup, trainable share, Pareto frontiers.")
    parser.add_argument("folders", type=Path, nargs="*",
                        help="recipe folders, a folder of recipes, or run folders (default: outputs/ and recipes/)")
    parser.add_argument("--task", help="task to compare, e.g. glue/sst2 (needed when several are found)")
    parser.add_argument("--model", help="only settings of this model option, e.g. minilm")
    parser.add_argument("--out", type=Path, help="where the files go (default: outputs/compare/<task>)")
    args = parser.parse_args(argv)
    folders = args.folders or [Path(f) for f in DEFAULT_FOLDERS if Path(f).is_dir()]
    not_run: list[tuple[str, str]] = []
    try:
        points = gather(folders, args.task, args.model, not_run)
        if not points:
            raise UserError(f"no setting of task {args.task or '(any)'}{' and model ' + args.model if args.model else ''} "
                            f"under {', '.join(map(str, folders))}; recipes declare theirs in expected.csv's `point` column")
        task = args.task or points[0].task
        title = f"{task}" + (f", {args.model}" if args.model else "") + ": methods compared"
        files = write_all(points, title, args.out or Path("outputs/compare") / task.replace("/", "-"), not_run)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(title, points, not_run))
    print("wrote: " + ", ".join(map(str, files)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
