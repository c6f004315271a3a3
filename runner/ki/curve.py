"""The validation curve of an MLM run, and the comparison the KI paper makes with it.

    curve.csv   step, eval_loss, eval_perplexity, and the training terms logged nearest before that step
                (loss, loss_alpha, loss_mlm, loss_kd: the KI terms recorded through LossState.log)
    curve.png   validation loss vs step

`steps_fraction(ki, scratch)`: the steps the KI student needs to reach the from-scratch student's final
validation loss, as a fraction of the scratch run's steps (< 1: KI saves that share of the steps).
`kd_stop_fraction(ki, scratch, stop)`: the paper's own measure (§4.1: KD stops at step 40k, where the KI
student is "almost" where the scratch one is after 55k steps): the step where a_t reaches 0, over the steps
the scratch student needs to reach the KI student's loss at that step. Crossings are interpolated linearly
between the two evaluations around them.
"""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

from transformers import TrainerCallback

COLUMNS = ("step", "eval_loss", "eval_perplexity", "loss", "loss_alpha", "loss_mlm", "loss_kd", "learning_rate")


def rows_from_history(history: list[dict]) -> list[dict]:
    """One row per evaluation (Trainer log_history entries with eval_loss), with the latest training
    log entry at or before its step."""
    rows, last_train = [], {}
    for entry in sorted(history, key=lambda h: (h.get("step", 0), "eval_loss" in h)):
        if "eval_loss" not in entry:
            if "loss" in entry or any(k.startswith("loss_") for k in entry):
                last_train = entry
            continue
        row = {"step": int(entry["step"]), "eval_loss": float(entry["eval_loss"]),
               "eval_perplexity": math.exp(min(float(entry["eval_loss"]), 50.0))}
        row.update({k: last_train[k] for k in COLUMNS[3:] if k in last_train})
        rows = [r for r in rows if r["step"] != row["step"]] + [row]  # a re-evaluation replaces the point
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in COLUMNS} for row in rows)
    tmp.replace(path)


def read_csv(path: str | Path) -> list[tuple[int, float]]:
    """(step, validation loss) points of a curve.csv, by step."""
    with Path(path).open() as handle:
        points = [(int(r["step"]), float(r["eval_loss"])) for r in csv.DictReader(handle) if r["eval_loss"]]
    return sorted(points)


def plot(curves: dict[str, list[tuple[int, float]]], path: Path, title: str = "") -> Path:
    """Validation loss vs step, one line per curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in curves.items():
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], marker=".", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("validation MLM loss (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


class CurveCallback(TrainerCallback):
    """Rewrites <folder>/curve.csv and curve.png after every evaluation and at the end of training. The
    Trainer restores log_history from the checkpoint on resume, so a resumed run's curve is whole."""

    def __init__(self, folder: Path, title: str = "", extra: dict[str, list[tuple[int, float]]] | None = None,
                 label: str = "this run"):
        self.folder = Path(folder)
        self.label = label
        self.title = title
        self.extra = extra or {}

    def write(self, history: list[dict]) -> list[dict]:
        rows = rows_from_history(history)
        write_csv(rows, self.folder / "curve.csv")
        if rows:
            plot({self.label: [(r["step"], r["eval_loss"]) for r in rows], **self.extra},
                 self.folder / "curve.png", self.title)
        return rows

    def on_evaluate(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write(state.log_history)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write(state.log_history)


def steps_to_reach(points: list[tuple[int, float]], target: float) -> float | None:
    """The first step at which the curve is at or below `target`, interpolated between the evaluation
    before and the one at the crossing; None if it never gets there."""
    previous = None
    for step, value in points:
        if value <= target:
            if previous is None or previous[1] == value:
                return float(step)
            (s0, v0) = previous
            return s0 + (step - s0) * (v0 - target) / (v0 - value)
        previous = (step, value)
    return None


def steps_fraction(ki: list[tuple[int, float]], scratch: list[tuple[int, float]]) -> float | None:
    """Steps the KI curve needs to reach the scratch curve's final loss, over the scratch run's steps."""
    if not ki or not scratch:
        return None
    final_step, final_loss = scratch[-1]
    reached = steps_to_reach(ki, final_loss)
    return None if reached is None or final_step <= 0 else reached / final_step


def loss_at(points: list[tuple[int, float]], step: int) -> float | None:
    """The curve's value at `step`, interpolated between the evaluations around it; None outside the curve."""
    for (s0, v0), (s1, v1) in itertools.pairwise(points):
        if s0 <= step <= s1:
            return v0 if s1 == s0 else v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return points[0][1] if len(points) == 1 and points[0][0] == step else None


def kd_stop_fraction(ki: list[tuple[int, float]], scratch: list[tuple[int, float]], stop: int) -> float | None:
    """`stop` (the step where KD stops) over the steps the scratch curve needs to reach the KI curve's loss at
    `stop`; None when the KI curve has no value there or the scratch curve never gets that low."""
    target = loss_at(ki, stop) if stop > 0 else None
    reached = None if target is None else steps_to_reach(scratch, target)
    return None if not reached else stop / reached


def kd_stop(method: dict) -> int | None:
    """The step where a method=ki config lets its teacher go (a_t = 0 from there on); None for the constant
    schedule, which never does."""
    if method.get("schedule") == "constant" or not method.get("inherit_steps"):
        return None
    return int(method["inherit_steps"])


# ---------------------------------------------------------------------------------------------------------
# The recipe's figure: every completed ki run under a folder, mean curve per schedule and of the scratch runs.
# Run folders do not outlive a checkout, so every curve used is also copied to <out>/curves/ (listed in
# curves/index.csv); with keep_earlier the runs listed there and not found under the folder count too, the
# way `python -m runner.tables --keep-earlier` keeps a table's earlier seeds.

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


if __name__ == "__main__":  # python -m runner.ki.curve <runs folder> [<out folder>] [--keep-earlier]
    import argparse

    parser = argparse.ArgumentParser(prog="python -m runner.ki.curve",
                                     description="ki-curves.png (mean validation loss per schedule), one figure per "
                                                 "seed, ki-steps.csv (steps_fraction per run) and curves/ (the curves "
                                                 "used) from a folder of KI runs")
    parser.add_argument("runs", type=Path, help="folder searched for KI runs (e.g. outputs/recipes/knowledge-inheritance)")
    parser.add_argument("out", type=Path, nargs="?", help="where the files go (default: <runs>/tables)")
    parser.add_argument("--keep-earlier", action="store_true",
                        help="also count the runs archived in <out>/curves/ that are not under <runs> (an earlier "
                             "checkout's seeds or schedules)")
    args = parser.parse_args()
    if not args.runs.is_dir():
        parser.exit(2, f"error: {args.runs}: no such folder; pass the folder holding the KI runs\n")
    summary = summarize(args.runs, args.out or args.runs / "tables", keep_earlier=args.keep_earlier)
    for row in summary["rows"]:
        print(f"{row['schedule']:28s} seed {row['seed']}: steps_fraction {row['steps_fraction']}, "
              f"kd_stop_fraction {row['kd_stop_fraction']} (KD stops at step {row['kd_stop']}), "
              f"final loss {row['final_loss']} (scratch {row['scratch_final_loss']}), from {row['source']}")
