"""The validation curve of an MLM run, and the comparison the KI paper makes with it.

    curve.csv   step, eval_loss, eval_perplexity, and the training terms logged nearest before that step
                (loss, loss_alpha, loss_mlm, loss_kd: the KI terms recorded through LossState.log)
    curve.png   validation loss vs step (the run's own figure, redrawn after every evaluation)

The recipe-level figures (mean curve per schedule over seeds, one figure per seed), ki-steps.csv and the
archive of the curves used live with the tables: runner/tables/curves.py (`python -m runner.tables.curves`).

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
