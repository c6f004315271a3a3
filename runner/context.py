"""What a method receives: the checked configs, its run directory, and lazily built task, tokenizer and
tokenized data. A method reads like the paper's algorithm over these and the building blocks
(runner.train.fit, runner.evaluation.evaluate, runner.models.arch)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from runner.hardware import HardwareConfig
from runner.logger import LoggerConfig
from runner.models import ModelConfig

log = logging.getLogger("runner")


@dataclass
class Context:
    run_dir: Path
    seed: int
    data_dir: str | None
    cache_dir: str | None
    method: Any  # the method's Config dataclass instance
    model_cfg: ModelConfig
    teacher_cfg: ModelConfig | None  # the `teacher` group: a second model option (distillation, KI), or None
    task_cfg: Any  # runner.tasks.config.TaskConfig
    train: Any  # runner.train.TrainConfig
    hardware: HardwareConfig
    logger: LoggerConfig
    info: dict[str, Any] = field(default_factory=dict)  # extra results.json fields (parameters, speed, ...)

    def log(self, message: str) -> None:
        log.info(message)

    def path(self, name: str) -> Path:
        """A file or directory inside the run directory (stage artefacts, plots)."""
        return self.run_dir / name

    @cached_property
    def task(self):
        from runner import tasks

        return tasks.load(self.task_cfg, self.data_dir, self.seed)

    @cached_property
    def tokenizer(self):
        from runner.models import load_tokenizer

        return load_tokenizer(self.model_cfg)

    @cached_property
    def data(self) -> dict:
        """Tokenized splits (train, validation, test when the task has one), cached on disk."""
        from runner import tasks

        return tasks.tokenize(self.task, self.tokenizer, self.task_cfg.max_length, self.cache_dir)

    @property
    def model_kind(self) -> str:
        return "mlm" if self.task.is_mlm else "classification"

    def new_model(self, kind: str | None = None, model_cfg: ModelConfig | None = None):
        """A fresh model of `model_cfg` (default the run's `model`; e.g. ctx.teacher_cfg) with the task's
        head (`kind`: classification | mlm | base; default the task's), seeded for reproducibility."""
        from transformers import set_seed

        from runner.models import load_model

        set_seed(self.seed)
        task = self.task
        kind = kind or self.model_kind
        problem = "regression" if task.is_regression else "single_label_classification"
        return load_model(model_cfg or self.model_cfg, kind, num_labels=task.num_labels, problem_type=problem)

    def stages(self):
        """The method's resumable, shareable stages (runner/stages.py), cached under its own namespace."""
        from runner.stages import Stages

        return Stages(self.run_dir, self.cache_dir and Path(self.cache_dir), self.log, namespace=self.method.name)
