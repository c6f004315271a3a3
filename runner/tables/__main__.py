"""`python -m runner.tables <recipe or outputs folder> [--runs DIR ...] [--out DIR] [--keep-earlier]
[--no-committed] [--check]`.

A recipe's rows without a run here show its committed table (recipes/<paper>/results/, marked `committed`);
the files go under outputs/ unless --out names another folder (e.g. the recipe's results/, to update it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner.tables",
        description="Paper table: our runs (mean ± std over seeds) vs the recipe's expected.csv, with Δ. "
                    "Schema: runner/tables/__init__.py.")
    parser.add_argument("path", type=Path, help="recipe folder (recipes/<paper>) or a folder of run directories")
    parser.add_argument("--runs", type=Path, action="append",
                        help="search these folders for runs instead of the recipe's paths.output_root (repeatable)")
    parser.add_argument("--out", type=Path, help="where to write .md/.csv/.tex/.png (default: <output root>/tables, "
                                                 "under outputs/; the recipe's committed results/ change only when "
                                                 "--out names them)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--keep-earlier", action="store_true",
                        help="rows with no run here keep the numbers of the table already in --out (e.g. the "
                             "recipe's committed results/ after a fresh checkout), and rows run here for some "
                             "seeds take the other seeds of the same setting from it; marked `earlier table`")
    parser.add_argument("--no-committed", action="store_true",
                        help="rows with no run here stay `missing` instead of showing the recipe's committed table")
    parser.add_argument("--check", action="store_true", help="exit 1 when a row is off tolerance or missing")
    args = parser.parse_args(argv)

    from runner.tables import make_table

    try:
        table = make_table(args.path, runs=args.runs, out=args.out, write=not args.no_write,
                           keep_earlier=args.keep_earlier, committed=not args.no_committed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table.markdown)
    if table.files:
        print("wrote: " + ", ".join(str(f) for f in table.files))
    if args.check and table.problems:
        print(f"check failed: {len(table.problems)} row(s) off tolerance or missing", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
