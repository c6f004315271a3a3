"""Predictions and the task metric for any model, including transformed ones (MoE, pruned, quantized).

A plain no-grad loop rather than Trainer.evaluate: transformed models need no Trainer state, and the
loop reports its own wall time, which the speed columns of results.json use.
"""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader

from runner.train import collator


@torch.no_grad()
def predict(model, dataset, tokenizer, batch_size: int = 128, device: str | torch.device = "cpu"):
    """Logits (N, num_labels) and labels (N,) over `dataset` in order, plus the forward seconds."""
    model.eval().to(device)
    loader = DataLoader(dataset.remove_columns([c for c in dataset.column_names if c not in _MODEL_COLUMNS]),
                        batch_size=batch_size, shuffle=False, collate_fn=collator(tokenizer, mlm=False))
    logits, labels, seconds = [], [], 0.0
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        y = batch.pop("labels")
        t0 = time.perf_counter()
        out = model(**batch)
        seconds += time.perf_counter() - t0
        logits.append(out.logits.float().cpu())
        labels.append(y.cpu())
    return torch.cat(logits), torch.cat(labels), seconds


_MODEL_COLUMNS = {"input_ids", "attention_mask", "token_type_ids", "labels"}


def evaluate(ctx, model, dataset=None, batch_size: int | None = None) -> dict[str, float]:
    """Task metrics of `model` on `dataset` (default: the validation split), plus eval_seconds."""
    from runner.metrics import compute

    task = ctx.task
    dataset = ctx.data["validation"] if dataset is None else dataset
    device = "cuda" if ctx.hardware.device == "cuda" else "cpu"
    logits, labels, seconds = predict(model, dataset, ctx.tokenizer, batch_size or ctx.train.eval_batch_size,
                                      device)
    preds = logits.squeeze(-1) if task.is_regression else logits.argmax(-1)
    metrics = compute(task.metrics, preds.numpy(), labels.numpy())
    metrics["eval_seconds"] = round(seconds, 4)
    return metrics
