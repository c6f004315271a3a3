"""Keep the numbers of an earlier table for rows whose runs are not on this machine.

Run directories live under outputs/ (git-ignored), so a fresh checkout has none of the runs behind a recipe's
committed table (recipes/<paper>/results/<paper>.csv). Rebuilding the table from outputs/ alone would turn
every measured row into `missing`. So a row without runs here takes its numbers from the earlier table's CSV
(full precision, same label and metric): by default the recipe's committed table (marked `committed`, with the
command that re-runs the row), or with `--keep-earlier` the table already at --out (marked `earlier table`).
Δ and the status are recomputed against today's expected.csv, and the run directories named are those of the
earlier table. A null result (every run wrote the metric as null, e.g. a loss never reached) is a result and is
kept as one.

A row that has runs here keeps them, and takes from the earlier table only the seeds it has no run for, when
the earlier row is of the very same setting: same label and metric and the same config fingerprint (the CSV's
`setting` column, runner.results.fingerprint of the config less seed and paths) with per-seed values (its
`values` column). So a third seed run in a later session joins the first two; a changed recipe (another
learning rate, steps, ...) changes the fingerprint and its old seeds are never mixed in.

The fingerprint also changes when the code gains a config key, even one whose default keeps the old
behaviour: the earlier seeds of such a row are taken only when the runs here reproduce it, i.e. the earlier
row of the same label, metric, settings and variant holds every seed run here with the same value (to
1e-9 relative). The merged row then carries today's fingerprint.
"""

from __future__ import annotations

import csv
from pathlib import Path

from runner.errors import UserError
from runner.tables.aggregate import Line, stats, status
from runner.tables.facts import FACTS
from runner.tables.render import settings_text


def _float(text: str | None) -> float | None:
    return float(text) if text not in ("", None) else None


def read_earlier(path: Path) -> dict[tuple[str, str], list[dict[str, str]]]:
    """The measured rows of an earlier <name>.csv, by (label, metric); a label may have several variants. A
    row whose runs all wrote the metric as null (status `null`) counts as measured: its value is "none"."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the earlier table ({e}); drop --keep-earlier or fix the file") from None
    if rows and not {"label", "metric", "mean", "n"} <= set(rows[0]):
        raise UserError(f"{path}: not a table CSV written by runner.tables (needs label, metric, mean, n columns)")
    out: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in rows:
        if (row.get("mean") and int(row.get("n") or 0) > 0) or row.get("status") == "null":
            out.setdefault((row["label"], row["metric"]), []).append(row)
    return out


def per_seed(row: dict[str, str]) -> dict[str, float]:
    """seed -> value of an earlier row (its `values` column: "seed:value ...")."""
    pairs = (item.rpartition(":") for item in (row.get("values") or "").split())
    return {seed: float(value) for seed, _, value in pairs if seed}


def facts_of(row: dict[str, str]) -> dict[str, float]:
    return {k: float(row[k]) for k in FACTS if row.get(k)}


def add_seeds(line: Line, rows: list[dict[str, str]], path: Path, committed: bool = False) -> Line:
    """`line` (runs here) with the earlier per-seed values of its own setting for the seeds not run here."""
    same = [r for r in rows if line.setting_key and r.get("setting") == line.setting_key] or reproduced(line, rows)
    here = {str(seed) for seed in line.values}
    extra = {seed: v for r in same for seed, v in per_seed(r).items() if seed not in here}
    if not line.values or not extra:
        return line
    merged = Line(**line.__dict__)  # a relative row's `absolute` stays that of today's runs
    merged.values = {**{str(seed): v for seed, v in line.values.items()}, **extra}
    merged.mean, merged.std, merged.n = stats(list(merged.values.values()))
    merged.seeds = sorted(map(str, merged.values), key=lambda s: (len(s), s))
    merged.earlier_seeds = sorted(extra, key=lambda s: (len(s), s))
    merged.earlier, merged.committed = str(path), committed
    merged.run_dirs = line.run_dirs + [d for r in same for d in (r.get("run_dirs") or "").split()
                                       if d.rsplit("seed", 1)[-1] in extra]
    merged.status = status(merged)
    return merged


def reproduced(line: Line, rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The one earlier row of the line's settings and variant (another fingerprint) whose values for every
    seed run here equal today's: the same setting, re-run under a config that gained keys. [] otherwise."""
    mine = {str(seed): v for seed, v in line.values.items() if v is not None}
    if not mine:
        return []
    settings = settings_text(line.settings)
    same = [r for r in rows if r.get("settings", "") == settings and r.get("variant", "") == line.variant
            and _equal_on(per_seed(r), mine)]
    return same if len(same) == 1 else []


def _equal_on(earlier: dict[str, float], here: dict[str, float]) -> bool:
    return all(seed in earlier and abs(earlier[seed] - v) <= 1e-9 * max(1.0, abs(v)) for seed, v in here.items())


def kept_x(line: Line, row: dict[str, str], earlier: dict[tuple[str, str], list[dict[str, str]]]) -> float | None:
    """A kept row's plot x: its own `x` column, else (x read from results.json, e.g. trainable.percent) the
    earlier table's row that measured that path for the same setting, or for this row's comparison point
    (expected.csv `point`: one measurement may serve several points of the same shape)."""
    if row.get("x"):
        return _float(row["x"])
    if not line.x_path:
        return None
    settings, names = row.get("settings", ""), set(filter(None, line.point.split("|")))
    for other in (r for (_, metric), rs in earlier.items() if metric == line.x_path for r in rs):
        same = other.get("settings", "") == settings and other.get("variant", "") == row.get("variant", "")
        shared = bool(names) and names <= set(filter(None, (other.get("point") or "").split("|")))
        if (same or shared) and other.get("mean"):
            return float(other["mean"])
    return None


def keep_earlier(lines: list[Line], path: Path, committed: bool = False) -> list[Line]:
    """Lines where every `missing` line with earlier numbers is replaced by those numbers (one line per
    earlier variant), and lines with runs here gain the earlier seeds of their own setting that were not run
    here (add_seeds); other lines are returned unchanged. The earlier CSV's paper value is not used.
    committed: the earlier table is the recipe's committed results/ (rows marked `committed`)."""
    earlier = read_earlier(path) if path.exists() else {}
    out = []
    for line in lines:
        rows = earlier.get((line.label, line.metric))
        if rows and line.status != "missing":
            out.append(add_seeds(line, rows, path, committed))
            continue
        if not rows:
            out.append(line)
            continue
        for row in rows:
            kept = Line(**{**line.__dict__, "seeds": [], "run_dirs": []})
            kept.mean, kept.std, kept.n = _float(row["mean"]), _float(row.get("std", "")), int(row.get("n") or 0)
            kept.seeds = (row.get("seeds") or "").split()
            kept.variant = row.get("variant", "")
            kept.reference = row.get("reference", "")
            kept.absolute = _float(row.get("absolute", ""))
            kept.run_dirs = (row.get("run_dirs") or "").split()
            kept.values, kept.setting_key = per_seed(row), row.get("setting", "")
            kept.facts = facts_of(row)
            if kept.x is None:
                kept.x = kept_x(line, row, earlier)
            kept.earlier, kept.committed = str(path), committed
            kept.status = "null" if row.get("status") == "null" else status(kept)
            out.append(kept)
    return out
