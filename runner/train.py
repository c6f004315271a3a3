"""Training on the HF Trainer: one `fit()` that every method calls, with its own loss, callbacks,
optimizer parameter groups or teacher when the paper needs them.

The Trainer brings DDP (torchrun), mixed precision, gradient accumulation, checkpoints and resume;
this module only maps conf/train/default.yaml and conf/hardware/*.yaml onto TrainingArguments, resumes
from the run directory's last checkpoint, and returns best and last evaluation metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from runner import requeue
from runner.memory import PeakMemory
from runner.mlm import masked_lm_loss
from runner.models import count_parameters
from runner.tasks.collators import task_collator


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


@dataclass
class LossState:
    """What a method's loss sees of training: the optimiser step it contributes to (0-based), the total,
    the number of label tokens in the whole (accumulated) batch, and `log(**terms)` to report its terms.

    Terms are averaged over the micro-batches since the last logging step and logged as `loss_<name>`
    beside the Trainer's `loss` (log_history, run.log, wandb), so e.g. a KD and a CE term can be followed
    separately."""

    step: int
    max_steps: int
    num_items_in_batch: Any = None
    _terms: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def log(self, **terms) -> None:
        for name, value in terms.items():
            value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
            total = self._terms.setdefault(name, [0.0, 0])
            total[0] += value
            total[1] += 1

    @property
    def progress(self) -> float:
        """Share of training done, in [0, 1] (schedules that decay with the step)."""
        return min(1.0, self.step / self.max_steps) if self.max_steps > 0 else 0.0


# A method's loss: (model, inputs, teacher, state) -> (loss, outputs). The loss is the mean over the
# micro-batch it is given (as the models' own losses are); fit divides it for gradient accumulation.
LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor], torch.nn.Module | None, LossState],
                  tuple[torch.Tensor, Any]]


class RunnerTrainer(Trainer):
    """The HF Trainer plus an optional method loss and a frozen teacher (never saved with checkpoints)."""

    # Our losses, and the BERT-family models' own, are means over the micro-batch that ignore
    # num_items_in_batch; left at None the Trainer would take them as already scaled for gradient
    # accumulation (the model accepts **kwargs) and apply grad_accum times too large a gradient.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, loss_fn: LossFn | None = None, teacher: torch.nn.Module | None = None,
                 masked_lm: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.masked_lm = masked_lm
        self.teacher = teacher
        if teacher is not None:
            self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self._terms: dict[str, list[float]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Evaluation scores the model's own task loss; the method's loss (and its teacher) is for training.
        # A masked-LM task's own loss is computed with the vocabulary projection on the masked positions
        # only (runner/mlm.py: the same value as the model's, a fraction of the work).
        if self.masked_lm and (self.loss_fn is None or not model.training):
            loss = masked_lm_loss(model, inputs)
            return (loss, {"loss": loss}) if return_outputs else loss
        if self.loss_fn is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        state = LossState(step=self.state.global_step, max_steps=self.state.max_steps,
                          num_items_in_batch=num_items_in_batch, _terms=self._terms)
        loss, outputs = self.loss_fn(model, inputs, self.teacher, state)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._terms:  # a training logging step: add the method's terms
            for name, (total, count) in self._terms.items():
                logs[f"loss_{name}"] = round(total / max(count, 1), 6)
            self._terms.clear()
        super().log(logs, start_time)


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


def decay_groups(model: torch.nn.Module, groups: list[dict]) -> list[dict]:
    """Split each parameter group that does not set its own weight_decay into a decayed part and a
    no-decay part: biases and normalisation weights, exempt as in the Trainer's default optimizer."""
    from transformers.models.t5.modeling_t5 import T5LayerNorm
    from transformers.trainer_pt_utils import get_parameter_names

    decayed = set(get_parameter_names(model, [torch.nn.LayerNorm, T5LayerNorm], ["bias", "layernorm", "rmsnorm"]))
    exempt = {id(p) for name, p in model.named_parameters() if name not in decayed}
    out = []
    for group in groups:
        if "weight_decay" in group:
            out.append(group)
            continue
        params = list(group["params"])
        rest = {k: v for k, v in group.items() if k != "params"}
        parts = ({**rest, "params": [p for p in params if id(p) not in exempt]},
                 {**rest, "params": [p for p in params if id(p) in exempt], "weight_decay": 0.0})
        out += [g for g in parts if g["params"]]
    return out


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
    collator: Callable | None = None,
    compute_metrics: Callable | None = None,
) -> dict[str, Any]:
    """Train `model` on the task (or the given datasets); resume from `<run_dir>/<output>` if it has
    checkpoints. Returns {"last": metrics, "best": metrics, "train": throughput, "steps": n}.

    loss_fn: the method's loss (see LossFn); teacher: a frozen model handed to it; param_groups: AdamW
    groups (those without their own weight_decay get the train config's, except biases and norms);
    collator: batches (default the task's: padding, or masking for MLM); compute_metrics: evaluation
    (default the task's metrics; MLM tasks report loss and perplexity)."""
    train = train or ctx.train
    task = ctx.task
    data = ctx.data
    train_dataset = data["train"] if train_dataset is None else train_dataset
    eval_dataset = data.get("validation") if eval_dataset is None else eval_dataset
    if task.is_mlm and eval_dataset is not None:  # score the same masked tokens at every evaluation
        from runner.tasks.collators import fixed_masks

        eval_dataset = fixed_masks(eval_dataset, ctx.tokenizer, task.config.mlm_probability, task.config.split_seed)
    mlm = task.is_mlm
    main_metric = None if mlm else (train.best_metric or task.main_metric)
    output_dir = ctx.run_dir / output
    args = training_arguments(ctx, output_dir, train, main_metric and f"eval_{main_metric}",
                              has_eval=eval_dataset is not None)
    optimizers = (None, None)
    if param_groups is not None:
        groups = decay_groups(model, param_groups)
        optimizers = (torch.optim.AdamW(groups, lr=train.lr, weight_decay=train.weight_decay), None)
    from runner.metrics import compute_metrics_fn

    trainer = RunnerTrainer(
        model=model,
        args=args,
        data_collator=collator or task_collator(task, ctx.tokenizer, ctx.seed),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=ctx.tokenizer,
        compute_metrics=compute_metrics or (None if mlm else compute_metrics_fn(task)),
        callbacks=[*callbacks, StopOnRequest()],
        optimizers=optimizers,
        loss_fn=loss_fn,
        teacher=teacher,
        masked_lm=mlm,
    )
    resume = last_checkpoint(output_dir)
    if resume:
        ctx.log(f"resuming from {resume}")
    with PeakMemory(ctx.hardware.device) as memory:
        out = trainer.train(resume_from_checkpoint=resume)
    ctx.info["memory"] = memory.result()  # peak memory of training (runner/memory.py); the PEFT table reads it
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
