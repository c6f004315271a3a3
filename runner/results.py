"""The run directory contract: a deterministic path per config and an atomically written results.json.

results.json holds: status (running | completed | failed | requeued), metrics, the resolved config and its
fingerprint, the overrides, git commit, package versions, wall time, parameter counts and, for failed
runs, the error. No torch import here: the skip check of a completed run must take well under 3 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = "results.json"
# Keys the run directory itself writes into results.json (start/finish/_fail); a method may not return them.
RESERVED = ("status", "run_dir", "started_at", "attempts", "host", "command", "overrides", "fingerprint",
            "git_commit", "versions", "config", "data", "finished_at", "wall_time_s", "error", "traceback")
PACKAGES = ("torch", "transformers", "datasets", "hydra-core", "peft", "evaluate", "triton", "plm-runner")


def run_tag(override_dirname: str) -> str:
    """Directory name for a set of overrides: readable when short, hashed when long, `default` when none."""
    if not override_dirname:
        return "default"
    slug = re.sub(r"[^A-Za-z0-9=,._+-]", "_", override_dirname)
    if len(slug) <= 64:
        return slug
    digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:10]
    return f"{slug[:48]}-{digest}"


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("run_tag", run_tag, replace=True)


def fingerprint(config: dict) -> str:
    """Hash of the parts of the config that change the result (the run directory's identity)."""
    ignored = {"hardware", "logger", "paths", "force", "data_dir", "hydra"}
    kept = {k: v for k, v in config.items() if k not in ignored}
    kept["train"] = {k: v for k, v in kept.get("train", {}).items() if k != "dataloader_workers"}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    found = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


@dataclass
class RunDir:
    """One run's directory. `results` is the content of results.json (empty when there is none)."""

    path: Path
    results: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.path = Path(self.path)
        file = self.path / RESULTS
        if file.exists():
            try:
                self.results = json.loads(file.read_text())
            except json.JSONDecodeError:
                # A torn write cannot happen (atomic rename), but a hand-edited file can be broken.
                self.results = {"status": "unreadable"}

    @property
    def status(self) -> str | None:
        return self.results.get("status")

    def archive(self) -> list[Path]:
        """Move results.json and checkpoints aside (force=true): nothing already written is lost."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        moved = []
        for name in (RESULTS, "checkpoints"):
            src = self.path / name
            if src.exists():
                dst = self.path / f"{name}.{stamp}"
                shutil.move(src, dst)
                moved.append(dst)
        self.results = {}
        return moved

    def start(self, config: dict, overrides: list[str], data: dict | None = None) -> None:  # sets the RESERVED keys below
        self.path.mkdir(parents=True, exist_ok=True)
        previous = self.results
        self.results = {
            "status": "running",
            "run_dir": str(self.path),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "attempts": previous.get("attempts", 0) + 1,
            "host": socket.gethostname(),
            "command": " ".join(sys.argv),
            "overrides": overrides,
            "fingerprint": fingerprint(config),
            "git_commit": git_commit(),
            "versions": versions(),
            "config": config,
            "data": data,  # digest of the task's files (runner/tasks/digest.py): re-runs compare it
        }
        self._t0 = time.time()
        # Wall time accumulates across resumed attempts.
        self._previous_wall = previous.get("wall_time_s", 0.0) if previous.get("status") != "completed" else 0.0
        self.save()

    def finish(self, status: str, **fields: Any) -> None:
        self.results.update(fields)
        self.results["status"] = status
        self.results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.results["wall_time_s"] = round(self._previous_wall + time.time() - self._t0, 3)
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path / RESULTS, self.results)
