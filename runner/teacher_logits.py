"""A frozen teacher's logits on the training set, computed once (a shared stage) and looked up by the
tokens of each row: every method with a KD term (distillation, pruning with a dense teacher) uses it, so the
teacher's forward is paid once per teacher and dataset instead of once per student step.

The student's batches come from the Trainer's shuffled loader, which keeps no example index; a row is
found again by its unpadded token ids instead (identical token sequences get identical teacher logits,
since the teacher runs in eval mode). A batch with any row not in the cache (the validation set, a
changed tokenisation) falls back to running the teacher, so a stale cache costs time, never correctness.
"""

from __future__ import annotations

import dataclasses
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


def cached_logits(ctx, stages, teacher, teacher_id: str) -> LogitCache:
    """The teacher's logits on the whole training set as the shared stage `teacher_logits` of `stages`, keyed
    by what identifies the teacher (`teacher_id`: a stage digest or a run path), the task and the seed."""
    key = {"teacher": teacher_id, "task": dataclasses.asdict(ctx.task_cfg), "seed": ctx.seed,
           "tokenizer": ctx.model_cfg.name}

    def build(path: Path) -> dict:
        device = "cuda" if ctx.hardware.device == "cuda" else "cpu"
        cache = LogitCache.build(teacher, ctx.data["train"], ctx.tokenizer, ctx.train.eval_batch_size, device)
        cache.save(path / "logits.pt")
        return {"rows": len(cache)}

    stage = stages.run("teacher_logits", key, build, share=True)
    ctx.info.setdefault("stages", {})["teacher_logits"] = {
        "status": stage.reused, "path": str(stage.path), "seconds": stage.info.get("seconds")}
    return LogitCache.load(stage.path / "logits.pt")


def teacher_targets(cache: LogitCache | None, teacher, features: dict) -> Tensor:
    """The teacher's logits for one batch of model inputs (no labels): from the cache when every row is in it,
    else a forward of the frozen teacher under no_grad."""
    if cache is not None:
        cached = cache.lookup(features["input_ids"], features.get("attention_mask"))
        if cached is not None:
            return cached
    with torch.no_grad():
        return teacher(**features).logits
