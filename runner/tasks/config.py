"""The task schema: `TaskConfig` mirrors conf/task/**/*.yaml key for key (a test checks every file).

Imported by the CLI's `--cfg job` path, so it must stay light: no torch, transformers, datasets or
evaluate here, nor omegaconf (a DictConfig is recognised by duck typing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.errors import UserError

LOADERS = ("glue", "bbc", "text")


class TaskDataError(UserError, ValueError):
    """The task's data cannot be found or parsed; the message is one line that names the fix."""


@dataclass
class TaskConfig:
    name: str  # "glue/sst2": also the run-directory component and the cache folder name
    loader: str = "glue"  # "glue" (local GLUE layout or the hub), "bbc" (packaged BBC News), "text" (MLM corpus)
    subset: str | None = None  # GLUE folder under <data_dir>/glue and hub config name, e.g. "sst2"
    text_fields: list[str] = field(default_factory=lambda: ["sentence"])  # one field or a sentence pair
    num_labels: int = 2  # classes; 1 = regression (float label), 0 = masked-LM pre-training (no label)
    label_names: list[str] | None = None  # class names in id order; string labels in the data map through it
    metrics: list[str] = field(default_factory=lambda: ["accuracy"])  # names known to runner.metrics
    main_metric: str = "accuracy"  # the one metric a sweep or table ranks by; must be in `metrics`
    train_split: str = "train"  # split (file stem) to train on
    eval_split: str = "validation"  # split (file stem) to evaluate on; mnli: validation_matched
    max_length: int = 128  # tokens per example (MLM: block size)
    max_train_samples: int | None = None  # cap on train rows: seeded shuffle (run seed) then select
    max_eval_samples: int | None = None  # cap on eval rows: seeded shuffle (split_seed) then select
    k_shot: int | None = None  # LM-BFF few-shot: K train + K dev per class from train; test = eval split
    holdout_fraction: float | None = None  # bbc: share of each class held out as validation
    split_seed: int = 0  # seed of fixed data splits (bbc holdout, eval cap), independent of the run seed
    mlm_probability: float | None = None  # masked-LM: share of tokens masked by the collator
    files: dict[str, str] | None = None  # text loader: split -> file relative to data_dir

    def __post_init__(self) -> None:
        from runner.metrics import KNOWN_METRICS

        def fail(message: str) -> None:
            raise ValueError(f"task {self.name}: {message}")

        if self.loader not in LOADERS:
            fail(f"loader={self.loader!r} is not one of {', '.join(LOADERS)}")
        if self.loader == "glue" and not self.subset:
            fail("loader=glue needs subset (the GLUE folder/config name, e.g. sst2)")
        if not self.text_fields or len(self.text_fields) > 2:
            fail(f"text_fields={self.text_fields} must name one field or a pair")
        if self.num_labels < 0:
            fail(f"num_labels={self.num_labels} must be >= 0 (1 = regression, 0 = masked LM)")
        if self.num_labels <= 1 and self.label_names is not None:
            fail("label_names must be null for regression and masked-LM tasks")
        if self.label_names is not None and len(self.label_names) != self.num_labels:
            fail(f"label_names has {len(self.label_names)} names but num_labels={self.num_labels}")
        unknown = [m for m in self.metrics if m not in KNOWN_METRICS]
        if unknown:
            fail(f"unknown metrics {unknown}; known: {', '.join(KNOWN_METRICS)}")
        if self.main_metric not in self.metrics:
            fail(f"main_metric={self.main_metric!r} is not in metrics={self.metrics}")
        if self.k_shot is not None and (self.k_shot < 1 or self.num_labels == 0):
            fail("k_shot must be a positive K, and only for classification or regression tasks")
        if self.holdout_fraction is not None and not 0 < self.holdout_fraction < 1:
            fail(f"holdout_fraction={self.holdout_fraction} must lie in (0, 1)")
        if self.loader == "bbc" and self.holdout_fraction is None:
            fail("loader=bbc needs holdout_fraction (the corpus has no official validation split)")
        if self.loader == "text":
            missing = [s for s in (self.train_split, self.eval_split) if s not in (self.files or {})]
            if missing:
                fail(f"loader=text needs files.{missing[0]} (a path relative to data_dir)")
        if self.num_labels == 0 and self.mlm_probability is None:
            fail("masked-LM tasks (num_labels=0) need mlm_probability")
        for key in ("max_length", "max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                fail(f"{key}={value} must be positive (or null for no cap)")

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def is_mlm(self) -> bool:
        return self.num_labels == 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_cfg(cls, cfg: TaskConfig | Mapping[str, Any] | Any) -> TaskConfig:
        """A TaskConfig from itself, a dict or an OmegaConf DictConfig; unknown keys fail loudly."""
        if isinstance(cfg, TaskConfig):
            return cfg
        if hasattr(cfg, "_metadata"):  # an OmegaConf container, without importing omegaconf here
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(cfg, Mapping):
            raise TypeError(f"task config must be a TaskConfig, dict or DictConfig, not {type(cfg).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(cfg) - set(known))
        name = cfg.get("name", "?")
        if unknown:
            raise ValueError(f"task {name}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(known)}")
        if "name" not in cfg:
            raise ValueError("task config has no name (e.g. name: glue/sst2)")
        values = {k: (list(v) if isinstance(v, list | tuple) else v) for k, v in cfg.items()}
        if values.get("files") is not None:
            values["files"] = dict(values["files"])
        return cls(**values)
