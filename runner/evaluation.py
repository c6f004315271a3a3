"""Predictions and the task metric for any model, including transformed ones (MoE, pruned, quantized).

A plain no-grad loop rather than Trainer.evaluate: transformed models need no Trainer state, and the
loop reports its own wall time, which the speed columns of results.json use. Masked-LM tasks are scored
by the loss on a fixed, seeded set of masked tokens (runner.tasks.collators.fixed_masks) and its
perplexity, averaged over masked tokens.
"""

from __future__ import annotations

import math
import time

import torch
from torch.utils.data import DataLoader

from runner import mlm
from runner.tasks.collators import collator, fixed_masks, model_inputs


@torch.no_grad()
def predict(model, dataset, tokenizer, batch_size: int = 128, device: str | torch.device = "cpu"):
    """Logits (N, num_labels) and labels (N,) over `dataset` in order, plus the forward seconds."""
    model.eval().to(device)
    loader = DataLoader(model_inputs(dataset), batch_size=batch_size, shuffle=False,
                        collate_fn=collator(tokenizer, mlm=False))
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


@torch.no_grad()
def masked_lm_loss(model, dataset, tokenizer, batch_size: int = 128, device: str | torch.device = "cpu"):
    """(mean cross-entropy over the masked tokens, number of masked tokens, forward seconds) of an MLM
    model on a pre-masked dataset (input_ids and labels, -100 where not masked)."""
    model.eval().to(device)
    loader = DataLoader(model_inputs(dataset), batch_size=batch_size, shuffle=False,
                        collate_fn=collator(tokenizer, mlm=False))
    total, count, seconds = 0.0, 0, 0.0
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        t0 = time.perf_counter()
        loss, n = mlm.loss_and_count(model, batch)  # the vocabulary projection on the masked positions only
        seconds += time.perf_counter() - t0
        total += loss
        count += n
    return total / max(count, 1), count, seconds


def evaluate(ctx, model, dataset=None, batch_size: int | None = None) -> dict[str, float]:
    """Task metrics of `model` on `dataset` (default: the validation split), plus eval_seconds.
    Masked-LM tasks: {"loss", "perplexity", "masked_tokens", "eval_seconds"}."""
    from runner.metrics import compute

    task = ctx.task
    dataset = ctx.data["validation"] if dataset is None else dataset
    device = "cuda" if ctx.hardware.device == "cuda" else "cpu"
    batch_size = batch_size or ctx.train.eval_batch_size
    if task.is_mlm:
        masked = fixed_masks(dataset, ctx.tokenizer, task.config.mlm_probability, task.config.split_seed)
        loss, count, seconds = masked_lm_loss(model, masked, ctx.tokenizer, batch_size, device)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "masked_tokens": count,
                "eval_seconds": round(seconds, 4)}
    logits, labels, seconds = predict(model, dataset, ctx.tokenizer, batch_size, device)
    preds = logits.squeeze(-1) if task.is_regression else logits.argmax(-1)
    metrics = compute(task.metrics, preds.numpy(), labels.numpy())
    metrics["eval_seconds"] = round(seconds, 4)
    return metrics
