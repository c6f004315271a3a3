"""Masked-LM pre-training (BERT): a model from random init, from its pretrained weights, or continued
from a finished run, on an MLM corpus (task=pretrain/wikitext, task=pretrain/bbc).

    model    the model option with an MLM head (random init for the tiny/bert-* options), or
             method.base_run's saved model (continued pre-training)
    eval     the validation blocks, masked once (task.split_seed): every point of the curve and every
             run of the same task scores the same tokens
    train    MLM loss on the masked positions (runner.ki.loss), validation loss every train.eval_steps
             (train.eval_every=steps); resumes from the run's last checkpoint
    curve    curve.csv (step, validation loss and perplexity, training loss) and curve.png
    save     model/ with its MLM head: a teacher for method=ki, a base for finetune and prompt methods
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.artifacts import finished_run, load_model_dir, save_model
from runner.ki import mlm


@dataclass
class Config:
    """Mirror of conf/method/pretrain.yaml."""

    name: str = "pretrain"
    base_run: str | None = None
    save_model: bool = True


def run(ctx) -> dict:
    cfg: Config = ctx.method
    mlm.require_mlm(ctx, "pretrain")
    if cfg.base_run:
        model = load_model_dir(ctx, finished_run(cfg.base_run, key="method.base_run"), kind="mlm")
    else:
        model = ctx.new_model(kind="mlm")
    result = mlm.pretrain(ctx, model, ctx.run_dir,
                          title=f"{ctx.model_cfg.name} on {ctx.task.name}: MLM pre-training")
    if cfg.save_model:
        save_model(ctx, model, ctx.run_dir)
    return {"metrics": result["last"], "train": result["train"], "steps": result["steps"],
            "curve": "curve.csv"}
