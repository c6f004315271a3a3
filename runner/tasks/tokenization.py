"""Tokenize a Task's splits, with an on-disk cache keyed by everything that changes the result.

Classification/regression: one row per example, truncated to max_length, never padded (the training
collator pads each batch). Masked LM: lines are tokenized, concatenated and cut into max_length blocks
(the run_mlm recipe: the remainder of every 1,000-line batch is dropped); the MLM collator adds labels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

    from runner.tasks import Task

log = logging.getLogger(__name__)

# Bump when the tokenized layout changes, so old cache entries stop matching.
CACHE_VERSION = 1
BATCH_SIZE = 1000


def tokenize(task: Task, tokenizer: Any, max_length: int, cache_dir: str | None) -> dict[str, Dataset]:
    limit = getattr(tokenizer, "model_max_length", None)
    if limit and limit < 1_000_000 and max_length > limit:  # huge values mean "no limit set"
        log.warning("task %s: max_length %d exceeds the tokenizer's %d; using %d", task.name, max_length, limit, limit)
        max_length = limit
    splits = {"train": task.train, "validation": task.validation}
    if task.test is not None:
        splits["test"] = task.test
    out = {}
    for split, dataset in splits.items():
        key = cache_key(task, split, dataset, tokenizer, max_length)
        path = cache_path(cache_dir, task.name, split, key) if cache_dir else None
        if path is not None and path.is_dir():
            import datasets

            log.info("task %s: tokenized %s from cache %s", task.name, split, path)
            out[split] = datasets.load_from_disk(str(path))
            continue
        out[split] = tokenize_split(task, dataset, tokenizer, max_length, key)
        if path is not None:
            save_atomically(out[split], path)
    return out


def tokenize_split(task: Task, dataset: Dataset, tokenizer: Any, max_length: int, key: str) -> Dataset:
    log.info("task %s: tokenizing %d rows", task.name, len(dataset))
    fields = list(task.text_fields)
    if task.config.is_mlm:
        def encode_lines(batch: dict[str, list]) -> dict[str, list]:
            # verbose=False: lines longer than the model limit are expected here; chunking follows.
            return dict(tokenizer(batch[fields[0]], return_special_tokens_mask=True, verbose=False))

        encoded = dataset.map(encode_lines, batched=True, batch_size=BATCH_SIZE, remove_columns=dataset.column_names,
                              new_fingerprint=f"{key}-lines", desc=f"tokenize {task.name}")
        return encoded.map(lambda batch: chunk(batch, max_length), batched=True, batch_size=BATCH_SIZE,
                           new_fingerprint=key, desc=f"chunk {task.name}")

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = dict(tokenizer(*[batch[f] for f in fields], truncation=True, max_length=max_length))
        encoded["labels"] = batch["label"]
        return encoded

    tokenized = dataset.map(encode, batched=True, batch_size=BATCH_SIZE, remove_columns=dataset.column_names,
                            new_fingerprint=key, desc=f"tokenize {task.name}")
    if task.is_regression:  # python floats would be inferred as float64; MSELoss wants float32 labels
        import datasets

        tokenized = tokenized.cast_column("labels", datasets.Value("float32"))
    return tokenized


def chunk(batch: dict[str, list], block: int) -> dict[str, list]:
    """Concatenate the batch's token lists and cut them into full blocks of `block` tokens."""
    joined = {name: list(chain.from_iterable(values)) for name, values in batch.items()}
    total = len(joined["input_ids"]) // block * block
    return {name: [values[i:i + block] for i in range(0, total, block)] for name, values in joined.items()}


def content_fingerprint(dataset: Dataset) -> str:
    """A hash of the split's visible rows (after any select), column by column."""
    table = dataset.with_format("arrow")[:]
    digest = hashlib.sha256()
    for name in table.column_names:
        digest.update(name.encode())
        digest.update(json.dumps(table.column(name).to_pylist(), ensure_ascii=False).encode())
    return digest.hexdigest()


def cache_key(task: Task, split: str, dataset: Dataset, tokenizer: Any, max_length: int) -> str:
    parts = {
        "version": CACHE_VERSION,
        "task": task.config.to_dict(),
        "split": split,
        "content": content_fingerprint(dataset),
        "tokenizer": [type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""), len(tokenizer)],
        "max_length": max_length,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def cache_path(cache_dir: str, name: str, split: str, key: str) -> Path:
    return Path(cache_dir).expanduser() / "tokenized" / name.replace("/", "__") / f"{split}-{key}"


def save_atomically(dataset: Dataset, path: Path) -> None:
    """Write next to the target, then rename: a cache entry that exists is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    dataset.save_to_disk(str(tmp))
    try:
        os.rename(tmp, path)
    except OSError:  # another process (e.g. a DDP rank) finished the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
