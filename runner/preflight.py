"""Checks that run before a run directory is taken: a config that cannot run leaves nothing behind.

    top_level(config)    seed, force, data_dir have the right types (seed=abc is one line, not a traceback)
    before_start(ctx)    the task's data loads (empty files, missing headers), and the method's `check(ctx)`
                         (checks that need only the model's config, e.g. MoEfication's expert size) passes,
                         all before any weights load
    discard(run_dir)     removes what Hydra made for a run that never started (the dir and its run.log)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from runner.errors import UserError


def top_level(config: dict[str, Any]) -> None:
    seed = config.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"seed={seed!r} is not an integer; pass an integer, e.g. seed=42")
    force = config.get("force")
    if not isinstance(force, bool):
        raise UserError(f"force={force!r} is not true or false; pass force=true to redo a completed run")
    data_dir = config.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise UserError(f"data_dir={data_dir!r} is not a folder path; pass data_dir=<folder holding glue/, ...>")


def before_start(ctx) -> None:
    """Load the task's data and run the method's own config checks; raises UserError."""
    import importlib

    from runner import registry

    ctx.task  # noqa: B018 - loading it is the check (TaskDataError names the file and line)
    check = getattr(importlib.import_module(registry.get(ctx.method.name).__module__), "check", None)
    if check is not None:
        check(ctx)


def discard(run_dir: Path, output_root: str | None) -> None:
    """Remove a run directory that holds nothing but Hydra's run.log (the run never started), and the
    folders above it that this left empty, up to output_root."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or (run_dir / "results.json").exists():
        return
    if any(p.name != "run.log" for p in run_dir.iterdir()):
        return
    root = logging.getLogger()
    for handler in list(root.handlers):  # Hydra's file handler holds run.log open
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir.absolute():
            root.removeHandler(handler)
            handler.close()
    (run_dir / "run.log").unlink(missing_ok=True)
    stop = Path(os.path.abspath(output_root)) if output_root else None
    folder = Path(os.path.abspath(run_dir))
    while folder == run_dir.absolute() or (stop is not None and stop in folder.parents):
        try:
            folder.rmdir()  # only when empty: another run's files keep their folders
        except OSError:
            break
        folder = folder.parent
