"""Keep the numbers of an earlier table for rows whose runs are not on this machine.

Run directories live under outputs/ (git-ignored), so a fresh checkout has none of the runs behind a recipe's
committed table (recipes/<paper>/results/<paper>.csv). When only some settings are run again, rebuilding the
table from outputs/ alone would turn every other measured row into `missing`. With `--keep-earlier`, such a
row takes its numbers from the earlier table's CSV (full precision, same label and metric) instead, and is
marked `earlier` in the table: Δ and the status are recomputed against today's expected.csv, and the run
directories named are those of the earlier table. A row that has runs here never uses the earlier numbers.
"""

from __future__ import annotations

import csv
from pathlib import Path

from runner.errors import UserError
from runner.tables.aggregate import Line, status


def _float(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


def read_earlier(path: Path) -> dict[tuple[str, str], list[dict[str, str]]]:
    """The measured rows of an earlier <name>.csv, by (label, metric); a label may have several variants."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the earlier table ({e}); drop --keep-earlier or fix the file") from None
    if rows and not {"label", "metric", "mean", "n"} <= set(rows[0]):
        raise UserError(f"{path}: not a table CSV written by runner.tables (needs label, metric, mean, n columns)")
    out: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in rows:
        if row.get("mean") and int(row.get("n") or 0) > 0:
            out.setdefault((row["label"], row["metric"]), []).append(row)
    return out


def keep_earlier(lines: list[Line], path: Path) -> list[Line]:
    """Lines where every `missing` line with earlier numbers is replaced by those numbers (one line per
    earlier variant); other lines are returned unchanged. The earlier CSV's paper value is not used."""
    earlier = read_earlier(path) if path.exists() else {}
    out = []
    for line in lines:
        rows = earlier.get((line.label, line.metric)) if line.status == "missing" else None
        if not rows:
            out.append(line)
            continue
        for row in rows:
            kept = Line(**{**line.__dict__, "seeds": [], "run_dirs": []})
            kept.mean, kept.std, kept.n = _float(row["mean"]), _float(row.get("std", "")), int(row["n"])
            kept.seeds = (row.get("seeds") or "").split()
            kept.variant = row.get("variant", "")
            kept.reference = row.get("reference", "")
            kept.absolute = _float(row.get("absolute", ""))
            kept.run_dirs = (row.get("run_dirs") or "").split()
            if kept.x is None and row.get("x"):
                kept.x = _float(row["x"])
            kept.command = ""
            kept.earlier = str(path)
            kept.status = status(kept)
            out.append(kept)
    return out
