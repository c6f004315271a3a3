"""Training on the HF Trainer: one `fit()` that every method calls, with its own loss, callbacks,
optimizer parameter groups or teacher when the paper needs them.

The Trainer brings DDP (torchrun), mixed precision, gradient accumulation, checkpoints and resume;
this module only maps conf/train/default.yaml and conf/hardware/*.yaml onto TrainingArguments, resumes
from the run directory's last checkpoint, and returns best and last evaluation metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from runner import requeue
from runner.models import count_parameters


@dataclass
class TrainConfig:
    """Mirror of conf/train/default.yaml."""

    epochs: float = 2
    max_steps: int = -1
    batch_size: int = 32
    eval_batch_size: int = 128
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    scheduler: str = "linear"
    max_grad_norm: float = 1.0
    eval_every: Literal["epoch", "steps", "no"] = "epoch"
    eval_steps: int = 500
    save_steps: int = 200
    save_total_limit: int = 2
    logging_steps: int = 20
    dataloader_workers: int = 0
    best_metric: str | None = None


# A method's loss: (model, inputs, teacher) -> (loss, outputs).
LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor], torch.nn.Module | None], tuple[torch.Tensor, Any]]


class RunnerTrainer(Trainer):
    """The HF Trainer plus an optional method loss and a frozen teacher (never saved with checkpoints)."""

    def __init__(self, *args, loss_fn: LossFn | None = None, teacher: torch.nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.teacher = teacher
        if teacher is not None:
            self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.loss_fn is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = self.loss_fn(model, inputs, self.teacher)
        return (loss, outputs) if return_outputs else loss


class StopOnRequest(TrainerCallback):
    """SLURM requeue (runner/requeue.py): once the job's stop flag is set by the pre-timeout or preemption
    signal, save a checkpoint at the next step end and, once it is written, leave training by raising
    Requeue; the requeued job resumes from that checkpoint."""

    def on_step_end(self, args, state, control, **kwargs):
        if requeue.stop_requested():
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if requeue.stop_requested():
            raise requeue.Requeue(f"stopped at step {state.global_step} on the requeue signal; checkpoint saved")


def collator(tokenizer, mlm: bool, mlm_probability: float = 0.15):
    if mlm:
        return DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)
    return DataCollatorWithPadding(tokenizer)


def precision_flags(precision: str, device: str) -> dict[str, bool]:
    if device != "cuda" or precision == "fp32":
        return {}
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp16"
    return {precision: True}


def training_arguments(ctx, output_dir: Path, train: TrainConfig, main_metric: str | None,
                       greater_is_better: bool = True, has_eval: bool = True) -> TrainingArguments:
    hw = ctx.hardware
    eval_strategy = train.eval_every if has_eval else "no"
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.eval_batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.lr,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_ratio,  # transformers 5: a value < 1 is a ratio of the total steps
        lr_scheduler_type=train.scheduler,
        max_grad_norm=train.max_grad_norm,
        eval_strategy=eval_strategy,
        eval_steps=train.eval_steps if eval_strategy == "steps" else None,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        logging_steps=train.logging_steps,
        dataloader_num_workers=train.dataloader_workers,
        metric_for_best_model=main_metric,
        greater_is_better=greater_is_better,
        report_to=["wandb"] if ctx.logger.name == "wandb" else "none",
        run_name=str(ctx.run_dir),
        seed=ctx.seed,
        data_seed=ctx.seed,
        use_cpu=hw.device == "cpu",
        disable_tqdm=False,
        **precision_flags(hw.precision, hw.device),
    )


def fit(
    ctx,
    model: torch.nn.Module,
    train_dataset=None,
    eval_dataset=None,
    *,
    output: str = "checkpoints",
    loss_fn: LossFn | None = None,
    callbacks: Iterable[TrainerCallback] = (),
    param_groups: list[dict] | None = None,
    teacher: torch.nn.Module | None = None,
    train: TrainConfig | None = None,
) -> dict[str, Any]:
    """Train `model` on the task (or the given datasets); resume from `<run_dir>/<output>` if it has
    checkpoints. Returns {"last": metrics, "best": metrics, "train": throughput, "steps": n}."""
    train = train or ctx.train
    task = ctx.task
    data = ctx.data
    train_dataset = data["train"] if train_dataset is None else train_dataset
    eval_dataset = data.get("validation") if eval_dataset is None else eval_dataset
    mlm = task.num_labels == 0
    main_metric = None if mlm else (train.best_metric or task.main_metric)
    output_dir = ctx.run_dir / output
    args = training_arguments(ctx, output_dir, train, main_metric and f"eval_{main_metric}",
                              has_eval=eval_dataset is not None)
    optimizers = (None, None)
    if param_groups is not None:
        optimizers = (torch.optim.AdamW(param_groups, lr=train.lr, weight_decay=train.weight_decay), None)
    from runner.metrics import compute_metrics_fn

    trainer = RunnerTrainer(
        model=model,
        args=args,
        data_collator=collator(ctx.tokenizer, mlm, getattr(task.config, "mlm_probability", 0.15) or 0.15),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=ctx.tokenizer,
        compute_metrics=None if mlm else compute_metrics_fn(task),
        callbacks=[*callbacks, StopOnRequest()],
        optimizers=optimizers,
        loss_fn=loss_fn,
        teacher=teacher,
    )
    resume = last_checkpoint(output_dir)
    if resume:
        ctx.log(f"resuming from {resume}")
    out = trainer.train(resume_from_checkpoint=resume)
    evals = [h for h in trainer.state.log_history if any(k.startswith("eval_") for k in h)]
    if eval_dataset is not None and (not evals or evals[-1].get("step") != trainer.state.global_step):
        trainer.evaluate()
        evals = [h for h in trainer.state.log_history if any(k.startswith("eval_") for k in h)]
    ctx.info["parameters"] = count_parameters(model)
    last = _metrics(evals[-1]) if evals else {}
    best = last
    if evals and main_metric:
        key = f"eval_{main_metric}"
        best = _metrics(max(evals, key=lambda h: h.get(key, -math.inf)))
    if mlm:
        for m in (last, best):
            if "loss" in m:
                m["perplexity"] = math.exp(min(m["loss"], 50.0))
    return {
        "last": last,
        "best": best,
        "train": {k: v for k, v in out.metrics.items() if k.startswith("train_")},
        "steps": trainer.state.global_step,
    }


def last_checkpoint(folder: Path) -> str | None:
    """The newest *complete* checkpoint: a run killed mid-save leaves a directory without
    trainer_state.json (the Trainer writes it last), which must not be resumed from."""
    if not folder.exists():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return str(max(done, key=lambda p: int(p.name.split("-")[1]))) if done else None


def _metrics(entry: dict) -> dict[str, float]:
    """Strip the eval_ prefix and bookkeeping keys from a Trainer log entry."""
    skip = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}
    out = {k.removeprefix("eval_"): v for k, v in entry.items() if k.startswith("eval_") and k not in skip}
    out["epoch"] = entry.get("epoch")
    out["step"] = entry.get("step")
    return out
