"""Tasks: load a task's splits as `datasets.Dataset`s, and tokenize them (cached).

    task = tasks.load(cfg.task, data_dir=cfg.data_dir, seed=cfg.seed)
    tokenized = tasks.tokenize(task, tokenizer, cfg.task.max_length, cache_dir=cfg.paths.cache_dir)

Order of row selection in `load`, all deterministic:
  1. the loader gives the source train / eval splits (bbc: a fixed stratified holdout, split_seed);
  2. max_train_samples caps train (seeded by the run seed), max_eval_samples caps eval (split_seed, so
     every run seed is scored on the same rows);
  3. k_shot (LM-BFF): train = K per class, validation = another K per class from the rest of train,
     test = the eval split. Regression (STS-B) samples by the bin score >= 2.5, as LM-BFF does.

This module stays light to import (the CLI's `--cfg job` path imports the config): datasets and
transformers are imported inside the functions that need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.tasks.config import TaskConfig, TaskDataError

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["Task", "TaskConfig", "TaskDataError", "load", "tokenize"]


@dataclass
class Task:
    name: str
    config: TaskConfig
    train: Dataset
    validation: Dataset
    test: Dataset | None  # only k-shot tasks have one: the original eval split
    text_fields: list[str]
    num_labels: int  # 1 = regression, 0 = masked LM
    is_regression: bool
    label_names: list[str] | None
    metrics: list[str]
    main_metric: str

    @property
    def is_mlm(self) -> bool:
        return self.num_labels == 0


def load(cfg: TaskConfig | Any, data_dir: str | None, seed: int) -> Task:
    """The task's splits; `cfg` is a TaskConfig, a dict or the Hydra `cfg.task` DictConfig."""
    from runner.tasks import corpora, glue, sampling

    config = TaskConfig.from_cfg(cfg)
    if config.loader == "glue":
        splits = glue.load_splits(config, data_dir)
    elif config.loader == "bbc":
        splits = corpora.load_bbc(config)
    else:
        splits = corpora.load_text(config, data_dir)
    train, validation = splits[config.train_split], splits[config.eval_split]
    if config.max_train_samples is not None:
        train = train.select(sampling.subsample(len(train), config.max_train_samples, seed))
    if config.max_eval_samples is not None:
        validation = validation.select(sampling.subsample(len(validation), config.max_eval_samples,
                                                          config.split_seed))
    for split, rows in ((config.train_split, train), (config.eval_split, validation)):
        if len(rows) == 0:  # e.g. a text file of headings only; GLUE files name their own empty file
            raise TaskDataError(f"task {config.name}: the {split} split has no rows; add examples to its "
                                "file or point data_dir at complete data")
    test = None
    if config.k_shot is not None:
        bins = sampling.k_shot_bins(train["label"], config.is_regression)
        try:
            train_idx, dev_idx = sampling.k_shot(bins, config.k_shot, seed)
        except ValueError as error:
            raise TaskDataError(f"task {config.name}: {error}") from None
        train, validation, test = train.select(train_idx), train.select(dev_idx), validation
    return Task(
        name=config.name,
        config=config,
        train=train,
        validation=validation,
        test=test,
        text_fields=list(config.text_fields),
        num_labels=config.num_labels,
        is_regression=config.is_regression,
        label_names=list(config.label_names) if config.label_names else None,
        metrics=list(config.metrics),
        main_metric=config.main_metric,
    )


def tokenize(task: Task, tokenizer: Any, max_length: int, cache_dir: str | None) -> dict[str, Dataset]:
    """{"train", "validation"[, "test"]} -> input_ids, attention_mask[, token_type_ids], labels; unpadded.

    Masked-LM tasks give max_length blocks with special_tokens_mask and no labels (the collator masks).
    With cache_dir, a split is read back from <cache_dir>/tokenized/<task>/<split>-<key> when the key
    (task config, split content, tokenizer name + vocab size, max_length) matches.
    """
    from runner.tasks import tokenization

    return tokenization.tokenize(task, tokenizer, max_length, cache_dir)
