"""The settings of runner.tables.compare: one Point per method setting, from a recipe's table (its runs here or
its committed results/) or from a folder of runs, each with its metric, its share of its own dense reference,
measured speedups, parameters, trainable share, size on disk and training time.

Recipe rows join a point through expected.csv's `point` column (a name; "a|b" when one row serves several
points, e.g. one speed measurement for every student of the same shape). What a row gives the point follows
from its metric (role_of): the task metric, a relative row (% of the dense reference), speed.1x64.* /
speed.32x128.*, parameters.total, trainable.percent, saved.bytes, train.train_runtime. Runs found outside
recipes get their reference by method family (reference_of): the teacher (distill) or the dense stage (prune,
MoEfication) of the same run, a fine-tuning run of the same model and task (peft, prompt), itself (finetune).

Every value says where it came from: measured in the runs, a committed table, another row of the recipe, or
the method's definition (speedup 1.0 for a deployed dense architecture; runner.tables.facts); a value nobody
measured stays empty with the reason.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from runner.tables.aggregate import Line, closest_group, relative_values, stats
from runner.tables.collect import Collection, Group, lookup, varying_keys
from runner.tables.expected import FRACTION_METRICS, default_scale
from runner.tables.facts import FACTS, all_weights, dense_deployed, not_measured, run_facts

ROLES = {"speed_1x64": "speed.1x64.", "speed_32x128": "speed.32x128."}
ROLE_METRICS = {"parameters.total": "parameters", "trainable.total": "parameters", "trainable.percent": "trainable_pct",
                "train.train_runtime": "train_s", "saved.bytes": "size_mb", "parameters.trainable": "trainable_count"}


@dataclass
class Point:
    """One method setting: the row of the comparison table and a dot in its plots."""

    method: str                      # family and variant, e.g. "peft (lora)"
    name: str                        # the setting: recipe point name or run label
    task: str
    model: str
    source: str                      # recipe folder or run folder, and whether its numbers are committed
    keys: str = ""                   # distinguishing keys (variant or overrides)
    metric_name: str = ""
    metric: tuple[float | None, float | None, int] = (None, None, 0)      # mean, std, n (paper units)
    relative: tuple[float | None, float | None, int] = (None, None, 0)    # % of the dense reference
    reference: str = ""
    values: dict[str, float] = field(default_factory=dict)   # FACTS that are known
    notes: dict[str, str] = field(default_factory=dict)      # column -> where the value came from / why empty
    command: str = ""
    frontier: list[str] = field(default_factory=list)        # "speed", "trainable"
    number: int = 0

    def value(self, column: str) -> float | None:
        if column == "relative":
            return self.relative[0]
        if column == "metric":
            return self.metric[0]
        return self.values.get(column)


def role_of(line: Line) -> str | None:
    """What an expected row tells its point, from its metric (see the module docstring)."""
    if line.relative_to:
        return "relative"
    for role, prefix in ROLES.items():
        if line.metric.startswith(prefix):
            return role
    if line.metric in ROLE_METRICS:
        return ROLE_METRICS[line.metric]
    stem = line.metric.split("@")[0].split(".")[-1].lower()
    return "metric" if stem in FRACTION_METRICS else None


def method_of(settings: dict[str, Any]) -> dict[str, Any]:
    """The method.* keys of a setting as a dict (name, peft, pruner, loss, ...)."""
    return {k.split(".", 1)[1]: v for k, v in settings.items() if k.startswith("method.")}


def method_label(method: dict[str, Any]) -> str:
    name = str(method.get("name", "?"))
    for key in ("peft", "pruner", "loss", "split"):
        if method.get(key) not in (None, ""):
            return f"{name} ({method[key]})"
    return name


def reference_text(line: Line) -> str:
    """Which dense reference a relative row divides by, in words."""
    parts = dict(p.split("=", 1) for p in line.relative_to.split(";") if "=" in p)
    if set(parts) == {"metric"}:
        ref = parts["metric"].split(".")[0]
        if ref in ("teacher", "dense"):
            return {"teacher": "the teacher (same run)", "dense": "the dense stage (same run)"}[ref]
        if str(line.settings.get("method.relufy", "")).lower() == "true":  # MoEfication of the ReLU-fied model
            return f"the GELU dense model before ReLU-fication (same run's {parts['metric']})"
        return f"the dense model (same run's {parts['metric']})"
    return f"run {line.reference}" if line.reference else line.relative_to


def recipe_points(lines: list[Line], source: str, task: str | None, model: str | None,
                  not_run: list[tuple[str, str]] | None = None) -> list[Point]:
    """The points a recipe's table lines declare (expected.csv `point`), in the table's order; those with
    neither a run here nor a committed number go to `not_run` as (name, command)."""
    members: dict[tuple[str, str], list[tuple[Line, str]]] = {}
    for line in lines:
        role = role_of(line) if line.point else None
        for name in filter(None, (n.strip() for n in line.point.split("|"))) if role else ():
            members.setdefault((name, line.variant), []).append((line, role))
    points = []
    for (name, variant), rows in members.items():
        main = [line for line, role in rows if role in ("metric", "relative")] or [rows[0][0]]
        settings = main[0].settings
        if (task and settings.get("task.name") != task) or (model and settings.get("model.name") != model):
            continue
        measured = [line for line, _ in rows if line.mean is not None or line.status == "null"]
        here = [not line.committed or bool(line.earlier_seeds) for line in measured]  # a run made here
        kept = [line.committed for line in measured]  # numbers from the committed table
        state = "committed" if not any(here) else "runs here + committed" if any(kept) else "runs here"
        if not any(line.mean is not None for line, role in rows if role in ("metric", "relative")):
            if not_run is not None:  # declared, never run and nothing committed
                not_run.append((f"{source}: {name}", main[0].command))
            continue
        point = Point(method_label(method_of(settings)), name, settings.get("task.name", ""),
                      settings.get("model.name", ""), f"{source} ({state})", keys=variant, command=main[0].command)
        fill_from_lines(point, rows, settings)
        apply_rules(point, method_of(settings), committed=state == "committed")
        points.append(point)
    return points


def fill_from_lines(point: Point, rows: list[tuple[Line, str]], settings: dict[str, str]) -> None:
    """The point's values from its rows: its own (one point, or the point's very setting) before a row it
    shares with other points."""
    own = [(line, role) for line, role in rows if "|" not in line.point or line.settings == settings]
    shared = [(line, role) for line, role in rows if (line, role) not in own]
    for line, role in own:  # the task metric and the share of the dense reference
        if role == "metric" and line.mean is not None and point.metric[0] is None:
            point.metric_name, point.metric = line.metric, (line.mean, line.std, line.n)
        elif role == "relative" and line.mean is not None and point.relative[0] is None:
            point.relative, point.reference = (line.mean, line.std, line.n), reference_text(line)
    for line, role in own:
        if role == "relative" and point.metric[0] is None and line.absolute is not None:
            scale = default_scale(line.metric.split("@")[0])  # the relative row's own runs, before dividing
            point.metric_name, point.metric = line.metric, (line.absolute * scale, None, line.n)
            point.notes["metric"] = "mean of the runs behind the % of dense row (no spread kept)"
    if point.relative[0] is None and point.metric[0] is not None and point.metric_name.startswith("dense."):
        point.relative, point.reference = (100.0, None, point.metric[2]), "itself (the dense model)"

    def take(line: Line, role: str) -> None:
        if role in (*FACTS, "trainable_count") and role not in point.values and line.mean is not None:
            point.values[role] = line.mean / 1e6 if role == "size_mb" else line.mean

    for line, role in own:  # the point's own rows (a speedup row, trainable %, training time)
        take(line, role)
    for line, _ in own:  # facts the point's own runs recorded (results.json, or a committed table's columns)
        for key, value in line.facts.items():
            point.values.setdefault(key, value)
    for line, role in shared:  # last, a measurement it shares with other points of the same shape
        if role in FACTS and role not in point.values and line.mean is not None:
            point.notes[role] = f"measured on the runs of '{line.label}' (the same deployed model)"
        take(line, role)


def apply_rules(point: Point, method: dict[str, Any], committed: bool) -> None:
    """The values that follow from the method's definition, then the reasons for what is still empty."""
    count = point.values.pop("trainable_count", None)
    if method.get("name") == "finetune":
        if point.relative[0] is None and point.metric[0] is not None:
            point.relative, point.reference = (100.0, None, point.metric[2]), "itself (the dense model)"
        if count is not None and "parameters" not in point.values:
            point.values["parameters"] = count
            point.notes["parameters"] = "its trainable parameters: full fine-tuning trains every weight"
    dense = dense_deployed(method)
    for key in ("speed_1x64", "speed_32x128"):
        if key not in point.values and dense:
            point.values[key] = 1.0
            point.notes[key] = f"1.0 by definition: {dense}"
    every = all_weights(method)
    if "trainable_pct" not in point.values and every:
        point.values["trainable_pct"] = 100.0
        point.notes["trainable_pct"] = f"100 by definition: {every}"
    where = "not in the committed table" if committed else "not in the runs' results.json"
    for key in FACTS:
        if key not in point.values and key not in point.notes:
            hint = not_measured(method) if key in ROLES else ""
            point.notes[key] = where + (f" ({hint})" if hint else "")
    if point.relative[0] is None and "relative" not in point.notes:
        point.notes["relative"] = "no dense reference " + ("in the committed table" if committed else "found")


# ---------------------------------------------------------------------------------------------------------
# Runs outside recipes: one point per setting (MoEfication: per expert ratio), the reference by family


def run_points(found: Collection, source: str, task: str | None, model: str | None) -> list[Point]:
    groups = [g for g in found.groups if (not task or lookup(g.config, "task.name") == task)
              and (not model or lookup(g.config, "model.name") == model)]
    points = []
    for group in groups:
        method = group.config.get("method") or {}
        main = lookup(group.config, "task.main_metric")
        main = main if isinstance(main, str) else "accuracy"
        if not group.values(main) and method.get("name") != "moefication":
            continue  # no task metric (MLM pre-training, failed evaluation): nothing to compare
        keys = ", ".join(f"{k}={lookup(group.config, k)}" for k in varying_keys(
            [g.config for g in groups if (g.config.get("method") or {}).get("name") == method.get("name")]))
        for metric in metrics_of(group, main):
            point = Point(method_label(method), group.label(), str(lookup(group.config, "task.name")),
                          str(lookup(group.config, "model.name")), source, keys=keys, metric_name=metric)
            ours = group.values(metric)
            scale = default_scale(metric.split("@")[0])
            point.metric = stats([v * scale for v in ours.values()])
            ref_values, point.reference = reference_of(group, groups, metric, main)
            if ref_values:
                point.relative = stats(list(relative_values(ours, ref_values, 100.0).values()))
            else:
                point.notes["relative"] = point.reference
                point.reference = ""
            per_run = [run_facts(r.results, metric, r.path) for r in group.runs]
            for key in FACTS:
                found_values = [f[key] for f in per_run if key in f]
                if found_values:
                    point.values[key] = statistics.fmean(found_values)
            apply_rules(point, method, committed=False)
            points.append(point)
    return points


def metrics_of(group: Group, main: str) -> list[str]:
    """The metrics that are settings of their own: MoEfication's one per expert ratio, else the task's."""
    if (group.config.get("method") or {}).get("name") == "moefication":
        ratios = group.runs[0].results.get("ratios") or {}
        return [f"{main}@{key}" for key in ratios if group.values(f"{main}@{key}")]
    return [main]


def reference_of(group: Group, groups: list[Group], metric: str, main: str) -> tuple[dict[Any, float], str]:
    """(seed -> the dense reference's metric, which reference) by method family; ({}, why not) when none."""
    method = group.config.get("method") or {}
    name = method.get("name")
    if name == "finetune":
        return group.values(metric), "itself (the dense model)"
    if name == "distill":
        return group.values(f"teacher.{main}"), "the teacher (same run)"
    if name == "moefication":
        if method.get("relufy"):
            return group.values(f"relu_{main}"), "the ReLU-fied dense model (same run)"
        return group.values(main), "the dense stage (same run)"
    if group.values(f"dense.{main}"):  # prune and any method that records its dense stage
        return group.values(f"dense.{main}"), "the dense stage (same run)"
    if name in ("peft", "prompt"):
        same = [g for g in groups if (g.config.get("method") or {}).get("name") == "finetune"
                and all(lookup(g.config, k) == lookup(group.config, k) for k in ("task.name", "model.name", "task.k_shot"))
                and g.values(main)]
        ref = closest_group(same, group.config)
        if ref is not None:
            return ref.values(main), f"fine-tuning run {ref.label()}"
        return {}, f"no finetune run of {lookup(group.config, 'model.name')} on {lookup(group.config, 'task.name')} found"
    return {}, f"no dense reference known for method {name}"
