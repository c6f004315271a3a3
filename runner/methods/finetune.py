"""Full fine-tuning: the spine's reference method and the dense baseline every other method starts from.

    model = pretrained backbone + task head
    freeze parameters by name pattern (optional)
    train with the HF Trainer (resumes from the run's last checkpoint), evaluate each epoch
    k-shot tasks: evaluate the final model on the test split too
    save the final model for methods that build on it (MoEfication, distillation, pruning)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from runner.errors import UserError
from runner.evaluation import evaluate
from runner.train import fit


@dataclass
class Config:
    """Mirror of conf/method/finetune.yaml."""

    name: str = "finetune"
    freeze: list[str] = field(default_factory=list)
    trainable: list[str] = field(default_factory=list)
    save_model: bool = True


def select_trainable(model, freeze: list[str], trainable: list[str]) -> int:
    """Set requires_grad by regex over parameter names; returns the number of trainable tensors."""
    try:
        frozen, only = [re.compile(p) for p in freeze], [re.compile(p) for p in trainable]
    except re.error as e:
        raise UserError(f"method.freeze / method.trainable: bad regex ({e})") from None
    n = 0
    for name, p in model.named_parameters():
        keep = not only or any(r.search(name) for r in only)
        keep = keep and not any(r.search(name) for r in frozen)
        p.requires_grad_(keep)
        n += keep
    if n == 0:
        raise UserError(f"method.freeze={freeze} / method.trainable={trainable} leave no parameter to train")
    return n


def run(ctx) -> dict:
    cfg: Config = ctx.method
    model = ctx.new_model()
    select_trainable(model, cfg.freeze, cfg.trainable)
    result = fit(ctx, model)
    out = {"metrics": result["last"], "best": result["best"], "train": result["train"]}
    if "test" in ctx.data:  # k-shot tasks: the original validation split is the test set (LM-BFF)
        out["test"] = evaluate(ctx, model, ctx.data["test"])
    if cfg.save_model:
        model.save_pretrained(ctx.path("model"))
        ctx.tokenizer.save_pretrained(ctx.path("model"))
    return out
