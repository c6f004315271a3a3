"""The knowledge-inheritance recipe's curve figures and their archive, from a folder of KI runs.

    python -m runner.tables.curves <runs folder> [<out folder>] [--keep-earlier]

writes <out>/ki-curves.png (mean validation loss per schedule and of the scratch students, over seeds),
<out>/ki-curves-seed<s>.png (every schedule of one seed beside its scratch student and the teacher),
<out>/ki-steps.csv (steps_fraction and kd_stop_fraction per run, recomputed from the curves with the method's
own measures, runner/ki/curve.py) and <out>/curves/ (every curve used, listed in curves/index.csv).

Run folders do not outlive a checkout, so every curve used is also copied to <out>/curves/; with keep_earlier
the runs listed there and not found under the folder count too, the way `python -m runner.tables
--keep-earlier` keeps a table's earlier seeds.
"""

from __future__ import annotations

import csv
from pathlib import Path

from runner.ki.curve import kd_stop, kd_stop_fraction, plot, read_csv, steps_fraction

INDEX_COLUMNS = ("kind", "schedule", "seed", "stop", "file")


def collect_runs(root: Path) -> list[dict]:
    """Completed method=ki runs under `root`: {"schedule", "seed", "stop", "ki", "scratch", "teacher"}
    (points), plus "files": the curve.csv each came from."""
    import json

    runs = []
    for results in sorted(Path(root).rglob("results.json")):
        try:
            r = json.loads(results.read_text())
        except (OSError, ValueError):
            continue
        method = r.get("config", {}).get("method", {})
        if r.get("status") != "completed" or method.get("name") != "ki" or not (results.parent / "curve.csv").exists():
            continue
        label = f"KI {method.get('schedule')} (a0={method.get('alpha0')}, T={method.get('temperature')})"
        files = {kind: results.parent / sub / "curve.csv" for kind, sub in
                 (("ki", "."), ("scratch", "scratch"), ("teacher", "teacher"))}
        files = {kind: path for kind, path in files.items() if path.exists()}
        runs.append({"schedule": label, "seed": r["config"]["seed"], "stop": kd_stop(method), "files": files,
                     **{kind: read_csv(files[kind]) if kind in files else [] for kind in ("ki", "scratch", "teacher")}})
    return runs


def archive_name(kind: str, schedule: str, seed) -> str:
    """The file a curve gets under curves/: ki-linear-a0-1.0-t-1.0-seed2.csv, scratch-seed2.csv, teacher.csv."""
    if kind == "teacher":
        return "teacher.csv"
    if kind == "scratch":
        return f"scratch-seed{seed}.csv"
    slug = "".join(c if c.isalnum() or c == "." else "-" for c in schedule.lower())
    return f"{'-'.join(part for part in slug.split('-') if part)}-seed{seed}.csv"


def archive(runs: list[dict], folder: Path) -> None:
    """Copy every run's curves into `folder` and list them in folder/index.csv (kept rows of earlier runs
    stay listed)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    rows = {(r["kind"], r["schedule"], r["seed"]): r for r in read_index(folder)}
    for run in runs:
        for kind, path in run["files"].items():
            name = archive_name(kind, run["schedule"], run["seed"])
            schedule = run["schedule"] if kind == "ki" else ""
            seed = "" if kind == "teacher" else run["seed"]
            shutil.copyfile(path, folder / name)
            rows[(kind, schedule, str(seed))] = {"kind": kind, "schedule": schedule, "seed": str(seed),
                                                 "stop": run["stop"] if kind == "ki" and run["stop"] else "",
                                                 "file": name}
    with (folder / "index.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(rows[key] for key in sorted(rows))


def read_index(folder: Path) -> list[dict]:
    index = folder / "index.csv"
    if not index.exists():
        return []
    with index.open() as handle:
        return [{k: row.get(k) or "" for k in INDEX_COLUMNS} for row in csv.DictReader(handle)]


def earlier_runs(folder: Path, present: list[dict]) -> list[dict]:
    """The KI runs listed in folder/index.csv that are not among `present` (same schedule and seed), rebuilt
    from their archived curves, each with its seed's scratch curve and the teacher's."""
    index = read_index(folder)
    have = {(run["schedule"], str(run["seed"])) for run in present}
    others = {(row["kind"], row["seed"]): folder / row["file"] for row in index if row["kind"] != "ki"}
    runs = []
    for row in index:
        if row["kind"] != "ki" or (row["schedule"], row["seed"]) in have:
            continue
        scratch, teacher = others.get(("scratch", row["seed"])), others.get(("teacher", ""))
        runs.append({"schedule": row["schedule"], "seed": int(row["seed"]),
                     "stop": int(row["stop"]) if row["stop"] else None, "files": {}, "earlier": True,
                     "ki": read_csv(folder / row["file"]),
                     "scratch": read_csv(scratch) if scratch and scratch.exists() else [],
                     "teacher": read_csv(teacher) if teacher and teacher.exists() else []})
    return runs


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Pointwise mean over the curves, at the steps all of them have."""
    steps = set.intersection(*(set(s for s, _ in c) for c in curves)) if curves else set()
    return [(s, sum(dict(c)[s] for c in curves) / len(curves)) for s in sorted(steps)]


def seeds_label(seeds) -> str:
    seeds = sorted(seeds)
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def summarize(root: Path, out: Path, keep_earlier: bool = False) -> dict:
    """From the KI runs under `root` (and, with keep_earlier, those archived in <out>/curves/ only):
    <out>/ki-curves.png (mean validation loss per schedule and of the scratch students, over seeds),
    <out>/ki-curves-seed<s>.png (every schedule of one seed beside its scratch student and the teacher),
    <out>/ki-steps.csv (steps_fraction and kd_stop_fraction per run, recomputed from the curves) and
    <out>/curves/ (the curves used, with index.csv)."""
    runs = collect_runs(root)
    out.mkdir(parents=True, exist_ok=True)
    archive(runs, out / "curves")
    if keep_earlier:
        runs += earlier_runs(out / "curves", runs)
    runs.sort(key=lambda r: (r["seed"], r["schedule"]))
    by_schedule: dict[str, list[dict]] = {}
    for run in runs:
        by_schedule.setdefault(run["schedule"], []).append(run)
    scratch = {run["seed"]: run["scratch"] for run in runs if run["scratch"]}
    curves = {f"scratch (MLM only), {seeds_label(scratch)}": mean_curve(list(scratch.values()))}
    curves.update({f"{name}, {seeds_label(r['seed'] for r in group)}": mean_curve([r["ki"] for r in group])
                   for name, group in sorted(by_schedule.items())})
    plot({k: v for k, v in curves.items() if v}, out / "ki-curves.png", "validation MLM loss, mean over seeds")
    teacher = next((run["teacher"] for run in runs if run["teacher"]), [])
    for seed in sorted({run["seed"] for run in runs}):
        mine = [run for run in runs if run["seed"] == seed]
        lines = {"teacher (its own pre-training)": teacher, "scratch (MLM only)": scratch.get(seed, [])}
        lines.update({run["schedule"]: run["ki"] for run in mine})
        plot({k: v for k, v in lines.items() if v}, out / f"ki-curves-seed{seed}.png",
             f"validation MLM loss, seed {seed}")
    rows = [{"schedule": r["schedule"], "seed": r["seed"], "steps_fraction": steps_fraction(r["ki"], r["scratch"]),
             "kd_stop": r["stop"],
             "kd_stop_fraction": kd_stop_fraction(r["ki"], r["scratch"], r["stop"]) if r["stop"] else None,
             "final_loss": r["ki"][-1][1] if r["ki"] else None,
             "scratch_final_loss": r["scratch"][-1][1] if r["scratch"] else None,
             "source": "earlier" if r.get("earlier") else "run"}
            for r in runs]
    with (out / "ki-steps.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["schedule", "seed"])
        writer.writeheader()
        writer.writerows(rows)
    return {"runs": len(runs), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m runner.tables.curves",
                                     description="ki-curves.png (mean validation loss per schedule), one figure per "
                                                 "seed, ki-steps.csv (steps_fraction per run) and curves/ (the curves "
                                                 "used) from a folder of KI runs")
    parser.add_argument("runs", type=Path, help="folder searched for KI runs (e.g. outputs/recipes/knowledge-inheritance)")
    parser.add_argument("out", type=Path, nargs="?", help="where the files go (default: <runs>/tables)")
    parser.add_argument("--keep-earlier", action="store_true",
                        help="also count the runs archived in <out>/curves/ that are not under <runs> (an earlier "
                             "checkout's seeds or schedules)")
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        parser.exit(2, f"error: {args.runs}: no such folder; pass the folder holding the KI runs\n")
    summary = summarize(args.runs, args.out or args.runs / "tables", keep_earlier=args.keep_earlier)
    for row in summary["rows"]:
        print(f"{row['schedule']:28s} seed {row['seed']}: steps_fraction {row['steps_fraction']}, "
              f"kd_stop_fraction {row['kd_stop_fraction']} (KD stops at step {row['kd_stop']}), "
              f"final loss {row['final_loss']} (scratch {row['scratch_final_loss']}), from {row['source']}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
