"""Fixed evaluation masks, so every point of a validation curve (and every run compared on it) scores
the same masked tokens. The MLM collator draws new masks at every call; a curve measured that way moves
by the noise of the draw (~0.01-0.05 nats on a few hundred blocks), which is the size of the effects a
small-scale KI comparison looks for.

    eval_set = fixed_masks(ctx.data["validation"], tokenizer, 0.15, seed=0)   # labels drawn once
    collate  = Collator(mlm_collator, pad_id, seed)   # rows with labels padded as they are; others masked

Training masks are drawn with a generator seeded by (run seed, the batch's token ids), not by the global
RNG: a run resumed from a checkpoint masks every later batch exactly as the uninterrupted run did (the
Trainer's skipping of consumed batches moves the global RNG), and two runs of one seed that see the same
batches (the scratch and KI students) see the same masks. A block gets new masks in every epoch because
its batch companions change with the shuffle.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

KEEP = ("input_ids", "attention_mask", "token_type_ids", "labels")


def fixed_masks(dataset, tokenizer, probability: float, seed: int, batch_size: int = 256):
    """`dataset` (MLM blocks without labels) with masked input_ids and labels drawn once with `seed`,
    by the same 80/10/10 rule as training (transformers' DataCollatorForLanguageModeling)."""
    from transformers import DataCollatorForLanguageModeling

    draw = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability, seed=seed)
    columns = [c for c in dataset.column_names if c in (*KEEP, "special_tokens_mask")]

    def mask(batch: dict[str, list]) -> dict[str, Any]:
        rows = [{c: batch[c][i] for c in columns} for i in range(len(batch["input_ids"]))]
        out = draw(rows)
        return {k: v.tolist() for k, v in out.items() if k in KEEP}

    drop = [c for c in dataset.column_names if c not in KEEP]
    return dataset.map(mask, batched=True, batch_size=batch_size, remove_columns=drop,
                       new_fingerprint=f"{dataset._fingerprint}-masks-{probability}-{seed}",
                       desc="fixed eval masks")


class Collator:
    """Rows that already have labels (the fixed evaluation set) are padded as they are; rows without
    (training blocks) are masked by `mlm_collator` (a DataCollatorForLanguageModeling) with a generator
    seeded by `seed` and the batch's token ids."""

    def __init__(self, mlm_collator, pad_id: int, seed: int):
        self.mlm_collator = mlm_collator
        self.pad_id = pad_id
        self.key = str(seed).encode()

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if "labels" not in features[0]:
            self.mlm_collator.generator = torch.Generator().manual_seed(batch_seed(features, self.key))
            return self.mlm_collator(features)
        length = max(len(f["input_ids"]) for f in features)
        pad = {"input_ids": self.pad_id, "labels": -100, "attention_mask": 0, "token_type_ids": 0}
        return {k: torch.tensor([list(f[k]) + [pad[k]] * (length - len(f[k])) for f in features])
                for k in features[0] if k in pad}


def batch_seed(features: list[dict], key: bytes) -> int:
    digest = hashlib.blake2b(key=key, digest_size=8)
    for f in features:
        digest.update(torch.as_tensor(f["input_ids"], dtype=torch.int64).numpy().tobytes())
        digest.update(b"|")
    return int.from_bytes(digest.digest(), "little") >> 1
