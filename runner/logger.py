"""Experiment tracking (conf/logger/*.yaml): wandb through the HF Trainer, offline unless a key is set."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass
class LoggerConfig:
    """Mirror of conf/logger/*.yaml."""

    name: Literal["wandb", "none"] = "none"
    project: str | None = None
    entity: str | None = None


def setup(cfg: LoggerConfig, run_dir: Path) -> None:
    """Environment for the Trainer's wandb callback; offline mode keeps runs local without an API key."""
    if cfg.name != "wandb":
        return
    os.environ.setdefault("WANDB_PROJECT", cfg.project or "plm-runner")
    if cfg.entity:
        os.environ.setdefault("WANDB_ENTITY", cfg.entity)
    os.environ.setdefault("WANDB_DIR", str(run_dir))
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (Path.home() / ".netrc").exists()
    if not has_key:
        os.environ.setdefault("WANDB_MODE", "offline")
