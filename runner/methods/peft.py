"""Parameter-efficient tuning: train a small part of the model (or mask its updates) and save only that.

    method.peft = lora | prefix | prompt | ptuning | ia3 | ln     HF peft tuners (runner/peft/adapters.py)
                | bitfit                                          bias terms + task head only
                | child_f | child_d                               Child-Tuning: masked gradients (runner/peft/child.py)

    model = pretrained backbone + task head
    attach the option (the head always stays trainable); refuse options the family cannot take
    child_d: Fisher information on the training data -> the fixed mask of the top p entries   child_d_mask.pt
    train with the HF Trainer (the Child-Tuning mask between clipping and the optimizer step)
    trainable parameters: count and % (peft's own figures for peft tuners)
    save only what was trained (adapter/; Child-Tuning changes every weight: model/)
    reload it onto a fresh base model and evaluate: these are the run's metrics
    merge LoRA / IA3 / LN-tuning into the base weights and evaluate the merged model

BitFit and Child-Tuning are options of this method rather than methods of their own: each is a choice of
what to train on the same pipeline (train, count, save, reload, compare), and the PEFT table is one sweep
over method.peft.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.utils.data import DataLoader

from runner import artifacts
from runner.errors import UserError
from runner.evaluation import evaluate
from runner.peft import adapters, child
from runner.tasks.collators import collator, model_inputs
from runner.train import fit


@dataclass
class Config:
    """Mirror of conf/method/peft.yaml."""

    name: str = "peft"
    peft: Literal["lora", "prefix", "prompt", "ptuning", "ia3", "ln", "bitfit", "child_f", "child_d"] = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: list[str] = field(default_factory=lambda: ["q", "v"])
    ia3_targets: list[str] = field(default_factory=lambda: ["k", "v", "ffn_out"])
    virtual_tokens: int = 20
    prefix_projection: bool = False
    prefix_hidden: int = 512
    ptuning_encoder: Literal["MLP", "LSTM"] = "MLP"
    ptuning_hidden: int = 128
    with_ln: bool = False
    child_p: float = 0.3
    merge: bool = True

    def __post_init__(self):
        if self.with_ln and self.peft not in ("lora", "prefix", "prompt", "ptuning", "ia3"):
            raise ValueError(f"method.with_ln adds LN-tuning to lora, prefix, prompt, ptuning or ia3, "
                             f"not to {self.peft}")
        if not 0 < self.child_p <= 1:
            raise ValueError(f"method.child_p={self.child_p} must be in (0, 1]")
        for key in ("lora_r", "virtual_tokens", "prefix_hidden", "ptuning_hidden"):
            if getattr(self, key) < 1:
                raise ValueError(f"method.{key} must be at least 1")


def run(ctx) -> dict:
    cfg: Config = ctx.method
    if ctx.task.is_mlm:
        raise UserError(f"method=peft tunes classification/regression tasks; {ctx.task_cfg.name} has no labels")
    option = cfg.peft
    model = adapters.attach(option, ctx.new_model(), cfg)
    callbacks, info = [], {}
    if option in ("child_f", "child_d"):
        mask = child_mask(ctx, model, cfg.child_p) if option == "child_d" else None
        params = child.layer_parameters(model) if mask else {
            n: p for n, p in model.named_parameters() if p.requires_grad}
        callbacks.append(child.ChildTuning(params, "D" if mask else "F", cfg.child_p, mask))
        if mask:
            info["child_mask_share"] = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())

    trainable = adapters.trainable_parameters(model)
    ctx.log(f"method.peft={option}: {trainable['count']:,} trainable of {trainable['total']:,} "
            f"parameters ({trainable['percent']:.4f}%)")
    result = fit(ctx, model, callbacks=callbacks)
    if callbacks:
        kept = callbacks[0].kept
        info["child_kept_mean"] = sum(kept) / len(kept) if kept else None
    in_memory = evaluate(ctx, model)

    reloaded, saved = save_and_reload(ctx, option, model)
    metrics = evaluate(ctx, reloaded)
    out = {"metrics": metrics, "in_memory": in_memory, "best": result["best"], "train": result["train"],
           "trainable": trainable, "saved": saved, **info}
    if "test" in ctx.data:  # k-shot tasks: the original validation split is the test set
        out["test"] = evaluate(ctx, reloaded, ctx.data["test"])
    if cfg.merge:
        merged = adapters.merge(option, reloaded)  # in place: `reloaded` is the merged model from here on
        if merged is not None:
            out["merged"] = evaluate(ctx, merged)
    return out


def save_and_reload(ctx, option: str, model):
    """Save what the option trained, then put it back onto a fresh base model (the run's metrics come from
    this reloaded model, so a saved adapter is known to reproduce them)."""
    if option in ("child_f", "child_d"):
        path = artifacts.save_model(ctx, model, ctx.run_dir)
        reloaded = artifacts.load_model_dir(ctx, path)
    else:
        path = ctx.path("adapter")
        adapters.save(option, model, path)
        reloaded = adapters.load(option, ctx.new_model(), path)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return reloaded, {"path": path.name, "bytes": size}


def child_mask(ctx, model, reserve_p: float) -> dict[str, torch.Tensor]:
    """Child-Tuning-D's Fisher mask from the model before training; kept in the run directory so that a
    resumed run (whose model has already moved) uses the same mask."""
    path = ctx.path("child_d_mask.pt")
    if path.exists():
        return torch.load(path)
    data = ctx.data["train"]
    loader = DataLoader(model_inputs(data), batch_size=ctx.train.batch_size, shuffle=False,
                        collate_fn=collator(ctx.tokenizer, mlm=False))
    device = "cuda" if ctx.hardware.device == "cuda" else "cpu"
    model.to(device)
    ctx.log(f"Child-Tuning-D: Fisher information over {len(data)} training examples")
    mask = child.fisher_mask(model, loader, child.layer_parameters(model), reserve_p, ctx.train.max_grad_norm)
    mask = {n: m.cpu() for n, m in mask.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(mask, path)
    return mask
