"""What the pretrain and ki methods share: the MLM checks, the collator, the loss functions for
runner.train.fit, and one MLM pre-training into a folder (a run or a stage). Evaluation scores the task's
fixed validation masks (runner.train.fit, runner.tasks.collators.fixed_masks)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from runner.errors import UserError
from runner.ki.curve import CurveCallback
from runner.ki.loss import ki_terms


def require_mlm(ctx, method: str, model_cfgs=()) -> None:
    """One-line refusals: a task without masked-LM blocks, a model family without an MLM head."""
    if not ctx.task.is_mlm:
        raise UserError(f"method={method} pre-trains with masked LM; task {ctx.task.name} is not a masked-LM "
                        "task: use task=pretrain/wikitext or task=pretrain/bbc")
    for cfg in (ctx.model_cfg, *model_cfgs):
        if cfg is not None and cfg.family == "t5":
            raise UserError(f"method={method}: model {cfg.name} is a T5 (span-corruption pre-training, no "
                            "masked-LM head); use a BERT-family option (bert, roberta, electra)")


def loss_fn(rate: Callable[[int], float] | None = None, temperature: float = 2.0):
    """fit's training loss: KI with alpha_t = rate(step), or plain MLM (rate None). Evaluation always
    scores the plain MLM loss (fit, runner/mlm.py), so every curve is the same quantity."""

    def compute(model, inputs, teacher, state):
        alpha = 0.0 if rate is None else rate(state.step)
        terms = ki_terms(model, inputs, alpha, temperature, teacher)
        if rate is not None:
            state.log(alpha=alpha, mlm=terms.mlm.detach(), kd=terms.kd.detach())
        return terms.loss, {"loss": terms.loss}

    return compute


def pretrain(ctx, model, folder: Path, *, output: str = "checkpoints", loss=None, teacher=None,
             title: str = "", label: str = "this run", extra_curves: dict | None = None) -> dict:
    """Train `model` with `loss` (default: plain MLM) on the task; the validation curve goes to
    <folder>/curve.csv|png. Returns fit's result."""
    from runner.train import fit

    callback = CurveCallback(folder, title=title, extra=extra_curves, label=label)
    # fit's default MLM collator masks each batch from (ctx.seed, its tokens): resume-exact, and the scratch
    # and KI students of one seed see the same masks
    return fit(ctx, model, output=output, loss_fn=loss or loss_fn(), teacher=teacher, callbacks=[callback])


def sub_context(ctx, *, model_cfg=None, train=None, seed: int | None = None):
    """The same run with another model, training settings or seed (a stage that trains another model)."""
    return dataclasses.replace(ctx, model_cfg=model_cfg or ctx.model_cfg, train=train or ctx.train,
                               seed=ctx.seed if seed is None else seed, info={})


def same_vocabulary(student_tokenizer, student_size: int, teacher_tokenizer, teacher_size: int,
                    student: str, teacher: str) -> None:
    """KI compares output distributions token by token: the teacher's vocabulary (tokenizer and output
    layer) must be the student's."""
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab() or teacher_size != student_size:
        raise UserError(f"teacher {teacher} and student {student} have different vocabularies (teacher "
                        f"{len(teacher_tokenizer)} tokens / {teacher_size} outputs, student {len(student_tokenizer)} "
                        f"/ {student_size}); KI needs one vocabulary: pick a teacher with the student's tokenizer")
