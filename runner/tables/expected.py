"""Read a recipe's expected.csv (schema in runner/tables/__init__.py) and match its rows to run configs."""

from __future__ import annotations

import csv
import io
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import UserError
from runner.tables.collect import MISSING, lookup

# Columns with a fixed meaning; every other column is a setting: a dotted key of the run config.
RESERVED = ("label", "metric", "value", "scale", "tolerance", "relative_to", "source", "note", "command",
            "plot", "x", "x_label", "series", "verified", "comparable", "null_means", "point")
# Metrics that results.json stores as fractions and papers print as percentages: their default scale is 100.
FRACTION_METRICS = {"accuracy", "acc", "f1", "precision", "recall", "matthews_correlation", "mcc", "pearson",
                    "spearmanr", "spearman", "exact_match", "em", "combined_score"}


def default_scale(metric: str, relative: bool = False) -> float:
    """100 for fraction metrics and for relative rows (a percentage of the reference), else 1."""
    return 100.0 if relative or metric.split(".")[-1].lower() in FRACTION_METRICS else 1.0


@dataclass
class Expected:
    """One row of expected.csv: a published number and the setting it belongs to."""

    line: int
    metric: str
    settings: dict[str, str] = field(default_factory=dict)  # dotted config key -> cell text (non-empty)
    value: float | None = None       # the paper's number, in its own units; None = not published
    scale: float | None = None       # ours (a results.json number) x scale = the paper's units
    tolerance: float | None = None   # |ours - paper| above this is flagged
    relative_to: str = ""            # reference for relative rows (see parse_relative)
    label: str = ""
    source: str = ""
    note: str = ""
    command: str = ""                # arguments of `python -m runner -m` that produce this row's runs
    plot: str = ""                   # figure this row is a point of
    x: str = ""                      # its x: a number, or a dotted path into results.json
    x_label: str = ""
    series: str = ""                 # line of the figure this point belongs to
    verified: bool = False           # the paper's value was checked against the paper's own text
    comparable: str = ""             # "yes", or why the paper's number is not ours: other task/model/metric
    null_means: str = ""             # what a null result means for this metric (e.g. "never reached")
    point: str = ""                  # the cross-method comparison's setting(s) this row describes ("|" between)

    @property
    def relative(self) -> bool:
        return bool(self.relative_to)

    @property
    def flaggable(self) -> bool:
        """Only a verified number of the same task, model family and metric gets an ok/off flag."""
        return self.verified and self.comparable.lower() == "yes"

    @property
    def unit_scale(self) -> float:
        return self.scale if self.scale is not None else default_scale(self.metric, self.relative)

    def title(self) -> str:
        return self.label or ", ".join(self.settings.values()) or self.metric

    def fill_command(self) -> str:
        """The command that produces this row's runs."""
        if self.command:
            return f"python -m runner -m {self.command}"
        overrides = []
        for key, text in self.settings.items():
            group, _, leaf = key.partition(".")
            # model/method/task are config groups whose option is named after `name`: select the group.
            if leaf == "name" and group in ("model", "method", "task"):
                overrides.append(f"{group}={text}")
            else:
                overrides.append(f"{key}={text}")
        return "python -m runner -m " + " ".join(shlex.quote(o) for o in overrides)


def parse_number(text: str, column: str, line: int) -> float | None:
    text = text.strip().rstrip("%")
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise UserError(f"expected.csv line {line}: {column}={text!r} is not a number") from None


def parse_verified(text: str, line: int) -> bool:
    text = text.strip().lower()
    if text not in ("", "yes", "no"):
        raise UserError(f"expected.csv line {line}: verified={text!r}; write yes (checked in the paper's text) or no")
    return text == "yes"


def read_expected(path: Path) -> list[Expected]:
    """The rows of expected.csv. Lines starting with '#' are comments; empty cells mean 'not given'."""
    text = "".join(ln for ln in Path(path).read_text().splitlines(keepends=True) if not ln.lstrip().startswith("#"))
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "metric" not in reader.fieldnames:
        raise UserError(f"{path}: needs a header with at least a `metric` column (schema: runner/tables)")
    rows = []
    for number, raw in enumerate(reader, start=2):
        if None in raw:
            raise UserError(f"{path} row {number}: more cells than header columns")
        cells = {k.strip(): (v or "").strip() for k, v in raw.items()}
        if not any(cells.values()):
            continue
        if not cells["metric"]:
            raise UserError(f"{path} row {number}: empty metric")
        rows.append(Expected(
            line=number,
            metric=cells["metric"],
            settings={k: v for k, v in cells.items() if k not in RESERVED and v},
            value=parse_number(cells.get("value", ""), "value", number),
            scale=parse_number(cells.get("scale", ""), "scale", number),
            tolerance=parse_number(cells.get("tolerance", ""), "tolerance", number),
            verified=parse_verified(cells.get("verified", ""), number),
            **{k: cells.get(k, "") for k in ("relative_to", "label", "source", "note", "command", "plot", "x",
                                              "x_label", "series", "comparable", "null_means", "point")},
        ))
        row = rows[-1]
        if row.value is not None and not row.comparable:
            raise UserError(f"{path} row {number}: a paper value needs `comparable`: yes, or why not (other task, "
                            "other model, other metric)")
    return rows


def parse_cell(text: str) -> Any:
    """A CSV cell as a config value: numbers, true/false, null, [lists]; anything else stays a string."""
    import yaml

    try:
        return float(text) if "." in text or "e" in text.lower() else int(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def same_value(config_value: Any, text: str) -> bool:
    if str(config_value) == text:
        return True
    wanted = parse_cell(text)
    if isinstance(wanted, bool) or isinstance(config_value, bool):
        return wanted is config_value
    if isinstance(wanted, int | float) and isinstance(config_value, int | float):
        return math.isclose(float(wanted), float(config_value), rel_tol=1e-9, abs_tol=1e-12)
    return wanted == config_value


def matches(config: dict[str, Any], settings: dict[str, str]) -> bool:
    """True when every setting cell equals the config's value at that dotted key."""
    for key, text in settings.items():
        found = lookup(config, key)
        if found is MISSING or not same_value(found, text):
            return False
    return True


def parse_relative(spec: str, settings: dict[str, str], metric: str) -> tuple[dict[str, str], str]:
    """`relative_to` = `key=value;key=value`: the reference setting is the row's settings with these
    changed (`key=` drops a key); the special key `metric` names the reference's metric (default: the row's).
    E.g. `method.name=finetune;method.ratio=` or `metric=accuracy` (same runs, their dense accuracy)."""
    ref, ref_metric = dict(settings), metric
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, sep, value = part.partition("=")
        if not sep:
            raise UserError(f"relative_to: {part!r} is not key=value (e.g. method.name=finetune;metric=accuracy)")
        key, value = key.strip(), value.strip()
        if key == "metric":
            ref_metric = value or metric
        elif value:
            ref[key] = value
        else:
            ref.pop(key, None)
    return ref, ref_metric
