"""Batch collators: dynamic padding for classification/regression, masking for masked LM.

Every method batches through these (training via runner.train.fit, evaluation, activation collection,
teacher caching, timing), so padding and masking are the same everywhere.
"""

from __future__ import annotations

import hashlib

import torch

MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


def collator(tokenizer, mlm: bool, mlm_probability: float = 0.15):
    """Pads each batch to its longest row; with `mlm`, masks `mlm_probability` of the tokens (80% [MASK],
    10% random, 10% kept, BERT's recipe) and sets labels to -100 elsewhere."""
    from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding

    if mlm:
        if not 0 < mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        return DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)
    return DataCollatorWithPadding(tokenizer)


class MaskingCollator:
    """Masked LM: masks each training batch afresh; a batch that already carries labels (the fixed,
    pre-masked evaluation set of `fixed_masks`) is only padded, so every evaluation scores the same masks.

    With a `seed`, a training batch's masks come from a generator seeded by (seed, the batch's token ids)
    instead of torch's global RNG: a run resumed from a checkpoint masks every later batch exactly as the
    uninterrupted run did (the Trainer moves the global RNG while it skips the consumed batches), and two runs
    of one seed that see the same batches (KI's scratch and inheriting students) see the same masks. A block
    still gets new masks every epoch, as its batch companions change with the shuffle."""

    def __init__(self, tokenizer, mlm_probability: float = 0.15, seed: int | None = None):
        self.mask = collator(tokenizer, mlm=True, mlm_probability=mlm_probability)
        self.pad = collator(tokenizer, mlm=False)
        self.key = None if seed is None else str(seed).encode()

    def __call__(self, features: list[dict]):
        if "labels" in features[0]:
            return self.pad([{k: v for k, v in f.items() if k != "special_tokens_mask"} for f in features])
        if self.key is not None:
            self.mask.generator = torch.Generator().manual_seed(batch_seed(features, self.key))
        return self.mask(features)


def batch_seed(features: list[dict], key: bytes) -> int:
    """A 63-bit seed from the key and the batch's token ids, row by row."""
    digest = hashlib.blake2b(key=key, digest_size=8)
    for f in features:
        digest.update(torch.as_tensor(f["input_ids"], dtype=torch.int64).numpy().tobytes())
        digest.update(b"|")
    return int.from_bytes(digest.digest(), "little") >> 1


def task_collator(task, tokenizer, seed: int | None = None):
    """The collator a task trains and evaluates with: masked LM for num_labels == 0 (seeded masks when a
    seed is given), padding otherwise."""
    if task.is_mlm:
        return MaskingCollator(tokenizer, task.config.mlm_probability or 0.15, seed)
    return collator(tokenizer, mlm=False)


def fixed_masks(dataset, tokenizer, mlm_probability: float, seed: int):
    """An MLM evaluation set masked once with a seeded generator: input_ids with [MASK]/random/kept
    tokens and labels (-100 where not masked), the same for every run and every evaluation."""
    import datasets
    from transformers import DataCollatorForLanguageModeling

    if "labels" in dataset.column_names:
        return dataset
    masker = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)
    columns: dict[str, list] = {}
    for start in range(0, len(dataset), 256):
        batch = masker([dataset[i] for i in range(start, min(start + 256, len(dataset)))])
        for name, values in batch.items():
            if name in (*MODEL_COLUMNS, "labels"):
                columns.setdefault(name, []).extend(values.tolist())
    return datasets.Dataset.from_dict(columns)


def model_inputs(dataset, labels: bool = True):
    """`dataset` with only the columns a model's forward takes (and `labels` unless labels=False)."""
    keep = set(MODEL_COLUMNS) | ({"labels"} if labels else set())
    return dataset.remove_columns([c for c in dataset.column_names if c not in keep])
