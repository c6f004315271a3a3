"""One table: locate the runs of a recipe (or an outputs folder), aggregate, join expected.csv, write files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import UserError
from runner.tables.aggregate import Line, build_lines, group_line
from runner.tables.collect import MISSING, Collection, collect, lookup
from runner.tables.expected import read_expected

EXPECTED = "expected.csv"
RESULTS_DIR = "results"  # a recipe's committed tables: recipes/<paper>/results/<paper>.csv
DEFAULT_ROOT = "${oc.env:PLM_OUTPUT_ROOT,outputs}"  # conf/paths/default.yaml's output_root


@dataclass
class Table:
    name: str
    markdown: str
    lines: list[Line]
    others: list[Line]
    found: Collection
    files: list[Path] = field(default_factory=list)

    @property
    def problems(self) -> list[Line]:
        """Lines a reproduction check fails on: off tolerance, missing, or a metric path that finds nothing."""
        return [line for line in self.lines if line.status in ("off", "missing", "metric not found")]


def is_recipe(path: Path) -> bool:
    return (path / EXPECTED).exists() or any(path.glob("*.yaml"))


def resolve_root(raw: str) -> Path:
    """An output_root as Hydra would resolve it (oc.env defaults included), relative to the current dir."""
    from omegaconf import OmegaConf

    try:
        value = OmegaConf.to_container(OmegaConf.create({"v": raw}), resolve=True)["v"]
    except Exception as e:  # an interpolation of other keys cannot be resolved outside Hydra
        raise UserError(f"paths.output_root {raw!r}: cannot resolve it here ({e}); pass --runs DIR") from None
    return Path(str(value))


def recipe_roots(recipe: Path) -> list[Path]:
    """Where a recipe's experiment files send their runs (their paths.output_root), else the default root."""
    import yaml

    roots = []
    for file in sorted(recipe.rglob("*.yaml")):
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{file}: not valid YAML ({e})") from None
        raw = lookup(data, "paths.output_root") if isinstance(data, dict) else MISSING
        if raw is not MISSING and raw is not None:
            roots.append(resolve_root(str(raw)))
    return list(dict.fromkeys(roots)) or [resolve_root(DEFAULT_ROOT)]


def committed_table(recipe: Path) -> Path:
    """The recipe's committed table CSV (recipes/<paper>/results/<paper>.csv)."""
    return recipe / RESULTS_DIR / f"{recipe.resolve().name}.csv"


def make_table(path: Path | str, runs: list[Path] | None = None, out: Path | None = None,
               write: bool = True, keep_earlier: bool = False, committed: bool = True) -> Table:
    """Build the table of a recipe folder (expected.csv + experiment files) or of an outputs folder.

    runs: folders to search instead of the recipe's output roots. out: where the files go
    (default <first output root>/tables, under outputs/: a recipe's own files change only when out names
    them). write=False only renders (no files). Rows with no run here take the numbers of an earlier table
    (runner/tables/earlier.py): keep_earlier, the table already at out; else, with committed, the recipe's
    committed results/ (rows marked `committed`)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such folder; pass a recipe (recipes/<paper>) or an outputs folder")
    recipe = is_recipe(path)
    roots = [Path(r) for r in runs] if runs else (recipe_roots(path) if recipe else [path])
    found = collect([r for r in roots if r.is_dir()])
    found.roots = roots
    name = path.resolve().name
    if recipe and (path / EXPECTED).exists():
        lines, others = build_lines(read_expected(path / EXPECTED), found)
    else:
        lines, others = [], [group_line(g) for g in found.groups]
    out = Path(out) if out else roots[0] / "tables"
    from runner.tables.earlier import keep_earlier as keep

    mine = committed_table(path) if recipe else None
    if keep_earlier:
        earlier = out / f"{name}.csv"
        lines = keep(lines, earlier, committed=bool(mine and earlier.resolve() == mine.resolve()))
    elif committed and mine is not None and mine.exists() and lines:
        lines = keep(lines, mine, committed=True)
    from runner.tables.render import markdown

    table = Table(name, markdown(name, lines, others, found), lines, others, found)
    if write:
        table.files = write_files(table, out)
    return table


def write_files(table: Table, out: Path) -> list[Path]:
    from runner.tables.plots import plot_all
    from runner.tables.render import latex, write_csv

    out.mkdir(parents=True, exist_ok=True)
    md, csv_path, tex_path = (out / f"{table.name}{ext}" for ext in (".md", ".csv", ".tex"))
    _write(md, table.markdown)
    write_csv(csv_path, table.lines, table.others)
    _write(tex_path, latex(table.name, table.lines or table.others))
    return [md, csv_path, tex_path, *plot_all(table.lines, out)]


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
