"""Turn groups of runs and expected rows into table lines: mean ± sample std over seeds, Δ, flags."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from runner.tables.collect import MISSING, Collection, Group, Run, lookup, setting_diff, varying_keys
from runner.tables.expected import Expected, default_scale, matches, parse_relative


def stats(values: list[float]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation, n); std is None below two values (it is not defined)."""
    n = len(values)
    if n == 0:
        return None, None, 0
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if n > 1 else None), n


@dataclass
class Line:
    """One row of the rendered table."""

    label: str
    metric: str
    scale: float
    mean: float | None = None        # ours, in the paper's units (x scale; % of the reference if relative)
    std: float | None = None
    n: int = 0
    seeds: list[Any] = field(default_factory=list)
    paper: float | None = None
    tolerance: float | None = None
    # ok | off | missing | metric not found | null | no paper value | unverified | not comparable | no tolerance |
    # no reference
    status: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    variant: str = ""                # keys telling apart several settings that match one expected row
    relative_to: str = ""
    reference: str = ""              # the reference setting's label, for relative rows
    absolute: float | None = None    # relative rows: our mean before dividing by the reference
    source: str = ""
    note: str = ""
    command: str = ""                # fills a missing cell
    failed: int = 0                  # incomplete runs of this setting (excluded from the numbers)
    running: int = 0
    run_dirs: list[str] = field(default_factory=list)
    plot: str = ""
    x: float | None = None
    x_path: str = ""                 # the results.json path x was read from (expected.csv `x` not a number)
    x_label: str = ""
    series: str = ""
    earlier: str = ""                # the earlier table's CSV these numbers come from (runs not here)
    earlier_seeds: list[str] = field(default_factory=list)  # seeds of a line with runs here added from it
    values: dict[Any, float] = field(default_factory=dict)  # seed -> value (table units): what mean/std are of
    setting_key: str = ""            # runner.results.fingerprint of the setting (config less seed and paths)
    verified: bool = False           # expected.csv: the paper value was checked in the paper's text
    comparable: str = ""             # expected.csv: "yes" or why the paper's number is another measure
    null_means: str = ""             # what a null result means ("never reached"); shown instead of a number
    point: str = ""                  # expected.csv `point`: the comparison setting(s) of runner.tables.compare
    facts: dict[str, float] = field(default_factory=dict)  # runner.tables.facts of the line's runs (mean)
    committed: bool = False          # numbers from the recipe's committed results/ (no run here)

    @property
    def delta(self) -> float | None:
        if self.mean is None or self.paper is None:
            return None
        return self.mean - self.paper

    @property
    def flaggable(self) -> bool:
        """ok/off only against a verified paper number of the same task, model family and metric."""
        return self.verified and self.comparable.lower() == "yes"

    @property
    def flagged(self) -> bool:
        d = self.delta
        return self.flaggable and d is not None and self.tolerance is not None and abs(d) > self.tolerance + 1e-9


def scaled(values: dict[Any, float], scale: float) -> dict[Any, float]:
    return {seed: v * scale for seed, v in values.items()}


def relative_values(ours: dict[Any, float], ref: dict[Any, float], scale: float) -> dict[Any, float]:
    """Per-seed ratio ours/ref x scale over the seeds both have (a run and the dense run it started from);
    without common seeds, one ratio of the means (keyed None: no spread can be estimated)."""
    common = [s for s in ours if s in ref and ref[s] != 0]
    if common:
        return {s: scale * ours[s] / ref[s] for s in common}
    ref_mean = statistics.fmean(ref.values()) if ref else 0.0
    if ours and ref_mean:
        return {None: scale * statistics.fmean(ours.values()) / ref_mean}
    return {}


def closest_group(groups: list[Group], to: dict[str, Any]) -> Group | None:
    """The candidate whose config differs from `to` in the fewest keys (the reference run of a setting)."""
    if not groups:
        return None
    return min(groups, key=lambda g: (len(setting_diff(g.config, to)), g.label()))


def x_path(row: Expected) -> str:
    try:
        float(row.x)
        return ""
    except ValueError:
        return row.x


def x_value(row: Expected, runs: list[Run]) -> float | None:
    if not row.x:
        return None
    try:
        return float(row.x)
    except ValueError:
        values = [v for v in (r.value(row.x) for r in runs) if v is not None]
        return statistics.fmean(values) if values else None


def expected_lines(row: Expected, found: Collection) -> list[Line]:
    """The lines of one expected row: one per matching setting (usually exactly one), or a missing line."""
    candidates = [g for g in found.groups if matches(g.config, row.settings)]
    incomplete = [r for r in found.incomplete if matches(r.config, row.settings)]
    scale = row.unit_scale
    base = dict(label=row.title(), metric=row.metric, scale=scale, paper=row.value, tolerance=row.tolerance,
                settings=row.settings, relative_to=row.relative_to, source=row.source, note=row.note,
                command=row.fill_command(), failed=sum(r.status == "failed" for r in incomplete),
                running=sum(r.status == "running" for r in incomplete), plot=row.plot, x_label=row.x_label,
                series=row.series, verified=row.verified, comparable=row.comparable, null_means=row.null_means,
                point=row.point, x_path=x_path(row))
    with_metric = [g for g in candidates if g.values(row.metric)]
    if not with_metric:
        line = Line(**base, status="missing", x=x_value(row, []))
        if candidates:
            # Runs exist but none reports the metric: a wrong `metric` path, not a missing run; or the runs
            # write it as null (a measure that has no value, e.g. a loss never reached)
            runs = [r for g in candidates for r in g.runs]
            line.status = "null" if all(r.raw(row.metric) is None for r in runs) else "metric not found"
            line.run_dirs = [str(r.path) for r in runs]
            if line.status == "null":  # a result without a value: n counts the runs that reported it
                line.n, line.seeds = len(runs), [r.seed for r in runs]
                line.setting_key = candidates[0].key if len(candidates) == 1 else ""
        return [line]
    keys = varying_keys([g.config for g in with_metric])
    lines = []
    for group in with_metric:
        line = Line(**base, x=x_value(row, group.runs))
        line.variant = ", ".join(f"{k}={_show(lookup(group.config, k))}" for k in keys)
        line.run_dirs = [str(r.path) for r in group.runs]
        values = group.values(row.metric)
        if row.relative:
            ref_settings, ref_metric = parse_relative(row.relative_to, row.settings, row.metric)
            refs = [g for g in found.groups if matches(g.config, ref_settings) and g.values(ref_metric)]
            ref = closest_group(refs, group.config)
            if ref is None:
                line.status = "no reference"
                line.absolute = stats(list(values.values()))[0]
                lines.append(line)
                continue
            line.reference = ref.label() + ("" if ref_metric == row.metric else f" {ref_metric}")
            line.absolute = stats(list(values.values()))[0]
            values = relative_values(values, ref.values(ref_metric), scale)
        else:
            values = scaled(values, scale)
        line.mean, line.std, line.n = stats(list(values.values()))
        line.setting_key = group.key
        line.values = {} if None in values else values
        if None in values:  # a ratio of means (no common seeds): n is still the number of our runs
            line.n = len(group.values(row.metric))
        line.seeds = [s for s in values if s is not None] or group.seeds
        line.facts = mean_facts(group.runs, row.metric)
        line.status = status(line)
        lines.append(line)
    return lines


def mean_facts(runs: list[Run], metric: str) -> dict[str, float]:
    """The mean over the runs of each fact runner.tables.facts reads (speedups, parameters, size, time)."""
    from runner.tables.facts import run_facts

    per_run = [run_facts(r.results, metric, r.path) for r in runs]
    keys = dict.fromkeys(k for facts in per_run for k in facts)
    return {k: statistics.fmean([f[k] for f in per_run if k in f]) for k in keys}


def status(line: Line) -> str:
    """The flag rules: ok/off only for a verified paper number of the same task, model family and metric
    (expected.csv `verified`, `comparable`) with a tolerance; the others say why there is no flag."""
    if line.mean is None and line.n:  # every run reported the metric as null: a result without a value
        return "null"
    if line.paper is None:
        return "no paper value"
    if not line.verified:
        return "unverified"
    if line.comparable.lower() != "yes":
        return "not comparable"
    if line.tolerance is None:
        return "no tolerance"
    return "off" if line.flagged else "ok"


def group_line(group: Group) -> Line:
    """A line for a setting that no expected row asks for: its task's main metric."""
    metric = lookup(group.config, "task.main_metric")
    metric = metric if isinstance(metric, str) else "accuracy"
    scale = default_scale(metric)
    mean, std, n = stats(list(scaled(group.values(metric), scale).values()))
    return Line(label=group.label(), metric=metric, scale=scale, mean=mean, std=std, n=n, seeds=group.seeds,
                status="", run_dirs=[str(r.path) for r in group.runs])


def build_lines(expected: list[Expected], found: Collection) -> tuple[list[Line], list[Line]]:
    """(lines of the expected rows, lines of the settings that no expected row matched)."""
    lines = [line for row in expected for line in expected_lines(row, found)]
    used = {d for line in lines for d in line.run_dirs}
    others = [group_line(g) for g in found.groups if not any(str(r.path) in used for r in g.runs)]
    return lines, others


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "(unset)" if value is MISSING else str(value)


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if abs(value) >= 1e4 or (abs(value) >= 1e3 and float(value).is_integer()):  # parameter counts, steps:
        return f"{value:,.0f}"                                                   # no decimals, thousands separated
    return f"{value:.{digits}f}"
