"""The teacher's logits on the training set, computed once and looked up by the tokens of each row.

The student's batches come from the Trainer's shuffled loader, which keeps no example index; a row is
found again by its unpadded token ids instead (identical token sequences get identical teacher logits,
since the teacher runs in eval mode). A batch with any row not in the cache (the validation set, a
changed tokenisation) falls back to running the teacher, so a stale cache costs time, never correctness.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def row_key(ids) -> bytes:
    return np.asarray(ids, dtype=np.int64).tobytes()


class LogitCache:
    def __init__(self, logits: Tensor, keys: list[bytes]):
        self.logits = logits
        self.keys = keys
        self.index = {key: i for i, key in enumerate(keys)}  # a repeated row keeps its last copy (same logits)

    @classmethod
    def build(cls, teacher, dataset, tokenizer, batch_size: int, device: str = "cpu") -> LogitCache:
        from runner.evaluation import predict

        logits, _, _ = predict(teacher, dataset, tokenizer, batch_size, device)
        return cls(logits, [row_key(ids) for ids in dataset["input_ids"]])

    def save(self, path: Path) -> None:
        torch.save({"logits": self.logits, "keys": self.keys}, path)

    @classmethod
    def load(cls, path: Path) -> LogitCache:
        data = torch.load(path, weights_only=True)
        return cls(data["logits"], data["keys"])

    def lookup(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor | None:
        """The cached logits of a (padded) batch, on its device; None if any row is missing."""
        rows = []
        ids = input_ids.cpu()
        mask = attention_mask.cpu().bool() if attention_mask is not None else None
        for r in range(ids.shape[0]):
            i = self.index.get(row_key(ids[r][mask[r]] if mask is not None else ids[r]))
            if i is None:
                return None
            rows.append(i)
        return self.logits[rows].to(input_ids.device)

    def __len__(self) -> int:
        return len(self.keys)
