"""Find run directories, read their results.json, and group the completed runs by setting.

A setting is a run's resolved config without the keys that do not change the result (seed, hardware,
logger, paths, data_dir, force): the runs of one setting differ only in their seed, and a table cell
aggregates over them. No torch import here: tables are built on machines that never trained.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.results import RESULTS, diff_keys, fingerprint

MISSING = object()  # lookup() result for a path that is not there (None is a valid config value)
# Folders inside a run directory (or next to the runs) that never hold another run: not walked.
SKIP_DIRS = {"checkpoints", "model", ".cache", ".hydra", "tables", "wandb"}


def lookup(obj: Any, path: str) -> Any:
    """Value at a dotted path, or MISSING. Keys may contain dots themselves ("ratios.0.25.accuracy" finds
    obj["ratios"]["0.25"]["accuracy"]): at each level the longest matching key wins. Lists take indices."""
    if path == "":
        return obj
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        key, rest = ".".join(parts[:i]), ".".join(parts[i:])
        if isinstance(obj, dict) and key in obj:
            found = lookup(obj[key], rest)
        elif isinstance(obj, list) and key.lstrip("-").isdigit() and -len(obj) <= int(key) < len(obj):
            found = lookup(obj[int(key)], rest)
        else:
            continue
        if found is not MISSING:
            return found
    return MISSING


def as_number(value: Any) -> float | None:
    """A finite float for int/float values (not bools), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class Run:
    """One run directory and the content of its results.json."""

    path: Path
    results: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.results.get("status") or "unknown")

    @property
    def config(self) -> dict[str, Any]:
        return self.results.get("config") or {}

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    def raw(self, path: str) -> Any:
        """The value at `path` in results.json ("metrics" first, then from the top), or MISSING."""
        found = lookup(self.results.get("metrics") or {}, path)
        return lookup(self.results, path) if found is MISSING else found

    def value(self, path: str) -> float | None:
        """A number from results.json: `metric` is looked up under "metrics" first, then from the top."""
        found = self.raw(path)
        return None if found is MISSING else as_number(found)


def find_runs(roots: list[Path], exclude: frozenset[Path] = frozenset()) -> list[Run]:
    """Every run directory (a folder holding results.json) under the roots, each read once; folders in
    `exclude` (resolved paths, e.g. a recipe's output root read through its table) are not walked."""
    runs, seen = [], set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            if exclude and Path(dirpath).resolve() in exclude:
                dirnames[:] = []
                continue
            if RESULTS in filenames:
                dirnames[:] = []  # a run directory holds checkpoints and artefacts, never another run
                path = Path(dirpath).resolve()
                if path not in seen:
                    seen.add(path)
                    runs.append(Run(path, read_results(path / RESULTS)))
            else:
                dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
    return runs


def read_results(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return {"status": "unreadable"}
    return data if isinstance(data, dict) else {"status": "unreadable"}


# Top-level config keys that do not change a result (runner.results.fingerprint ignores them too).
WHERE_KEYS = {"hardware", "logger", "paths", "force", "data_dir", "hydra"}


def setting_of(config: dict[str, Any]) -> dict[str, Any]:
    """The config without the seed: what the runs of one table cell share. A path naming the run's own seed
    (a run dir segment `seed<N>`, e.g. model.source=<pretrain run>/seed2/model for a downstream fine-tune of
    seed 2) names the same setting for every seed: the segment becomes `seed<seed>`."""
    seed = config.get("seed")
    segment = re.compile(rf"(?<![^/]){re.escape(f'seed{seed}')}(?![^/])") if seed is not None else None

    def seedless(value):
        if isinstance(value, dict):
            return {k: seedless(v) for k, v in value.items()}
        if isinstance(value, list):
            return [seedless(v) for v in value]
        if isinstance(value, str) and segment is not None and "/" in value:
            return segment.sub("seed<seed>", value)
        return value

    return {k: seedless(v) for k, v in config.items() if k != "seed"}


def setting_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Dotted keys that differ between two settings, leaving out where and how the runs ran."""
    return [k for k in diff_keys(a, b) if k.split(".")[0] not in WHERE_KEYS and k != "train.dataloader_workers"]


@dataclass
class Group:
    """The completed runs of one setting (one per seed)."""

    key: str
    config: dict[str, Any]
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r in self.runs]

    def values(self, metric: str) -> dict[Any, float]:
        """seed -> metric value, for the runs that report it."""
        found = {}
        for run in self.runs:
            v = run.value(metric)
            if v is not None:
                found[run.seed] = v
        return found

    def label(self) -> str:
        """method/task/model plus the run directory's override tag: how `python -m runner` named it."""
        c = self.config
        parts = [lookup(c, k) for k in ("method.name", "task.name", "model.name")]
        tag = self.runs[0].path.parent.name if self.runs else ""
        return "/".join(str(p) for p in parts if p is not MISSING) + (f" [{tag}]" if tag else "")


@dataclass
class Collection:
    """Everything found under the roots: completed runs grouped by setting, the others counted."""

    roots: list[Path]
    groups: list[Group]
    incomplete: list[Run]  # failed, running, unreadable: excluded from every number
    counts: Counter
    duplicates: int = 0  # completed runs of a setting and seed already seen (an older copy elsewhere)


def collect(roots: list[Path], exclude: frozenset[Path] = frozenset()) -> Collection:
    runs = find_runs(roots, exclude)
    counts = Counter(r.status for r in runs)
    by_key: dict[str, Group] = {}
    incomplete, duplicates = [], 0
    for run in sorted(runs, key=lambda r: str(r.results.get("finished_at") or "")):
        if run.status != "completed":
            incomplete.append(run)
            continue
        setting = setting_of(run.config)
        key = fingerprint(setting)
        group = by_key.setdefault(key, Group(key, setting))
        same_seed = [r for r in group.runs if r.seed == run.seed]
        if same_seed:
            # The same setting and seed completed twice (e.g. launched with a redundant override, which
            # changes the directory name): keep the later one so that each seed counts once.
            group.runs.remove(same_seed[0])
            duplicates += 1
        group.runs.append(run)
    groups = sorted(by_key.values(), key=lambda g: g.label())
    for g in groups:
        g.runs.sort(key=lambda r: str(r.seed))
    return Collection(list(roots), groups, incomplete, counts, duplicates)


def varying_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Dotted keys whose value differs among the configs (what tells several matching settings apart)."""
    keys: set[str] = set()
    for c in configs[1:]:
        keys.update(setting_diff(configs[0], c))
    return sorted(keys)
