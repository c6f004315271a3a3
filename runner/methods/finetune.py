"""Full fine-tuning: the spine's reference method and the dense baseline every other method starts from.

    model = pretrained backbone + task head
    freeze parameters by name pattern (optional)
    train with the HF Trainer (resumes from the run's last checkpoint), evaluate each epoch
    k-shot tasks: evaluate the final model on the test split too
    save the final model for methods that build on it (MoEfication, distillation, pruning)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runner.artifacts import save_model
from runner.evaluation import evaluate
from runner.models import select_trainable
from runner.train import fit


@dataclass
class Config:
    """Mirror of conf/method/finetune.yaml."""

    name: str = "finetune"
    freeze: list[str] = field(default_factory=list)
    trainable: list[str] = field(default_factory=list)
    save_model: bool = True


def run(ctx) -> dict:
    cfg: Config = ctx.method
    model = ctx.new_model()
    select_trainable(model, cfg.freeze, cfg.trainable)
    result = fit(ctx, model)
    out = {"metrics": result["last"], "best": result["best"], "train": result["train"]}
    if "test" in ctx.data:  # k-shot tasks: the original validation split is the test set (LM-BFF)
        out["test"] = evaluate(ctx, model, ctx.data["test"])
    if cfg.save_model:
        save_model(ctx, model, ctx.run_dir)
    return out
