"""Knowledge inheritance (Qin et al., NAACL 2022, arXiv 2105.13880): pre-train a larger student with MLM
plus the KD term of an existing smaller teacher, whose weight decays so the student ends on its own.

    teacher   method.teacher_run (a finished pretrain run), or the teacher= model option (used as is when
              it has pretrained weights, pre-trained here when it is random init), or else the model
              option method.teacher_model pre-trained here; stage teacher/ (shared through the stage cache)
    vocab     the teacher's vocabulary must be the student's (one line otherwise)
    scratch   (method.baseline) the same student, MLM only, same steps/data/seed; stage scratch/ (shared
              by every schedule of the seed)
    inherit   L_t = (1 - a_t) MLM + a_t T^2 KL(p_teacher^T || p_student^T), both on the masked positions;
              a_t: linear a_0 -> 0 over inherit_steps | step (a_0 until inherit_steps) | constant a_0.
              a_t, the MLM and the KD terms are logged at every logging step (loss_alpha, loss_mlm, loss_kd)
    compare   validation loss every train.eval_steps on the task's fixed masks; curve.csv/png with the scratch and
              teacher curves; steps_fraction = steps the KI student needs to reach the scratch student's
              final validation loss / the scratch steps; kd_stop_fraction = the paper's measure: the step
              where a_t reaches 0 / the steps the scratch student needs to reach the KI loss at that step
    save      model/ (student with its MLM head)
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from runner.artifacts import finished_run, load_model_dir, save_model
from runner.errors import UserError
from runner.ki import curve, mlm
from runner.ki.schedule import inheritance_rate
from runner.stages import Stages

CONF_MODELS = Path(__file__).resolve().parents[2] / "conf" / "model"


@dataclass
class Config:
    """Mirror of conf/method/ki.yaml."""

    name: str = "ki"
    teacher_run: str | None = None
    teacher_model: str = "bert-2l-128"
    teacher_steps: int = 600
    teacher_lr: float | None = None
    teacher_seed: int = 0
    schedule: Literal["linear", "step", "constant"] = "linear"
    alpha0: float = 1.0
    inherit_steps: int = 200
    temperature: float = 2.0
    baseline: bool = True
    save_model: bool = True

    def __post_init__(self):
        if not 0 <= self.alpha0 <= 1:
            raise ValueError(f"method.alpha0 must be in [0, 1], got {self.alpha0}")
        if self.inherit_steps < 0 or self.teacher_steps < 1:
            raise ValueError("method.inherit_steps must be >= 0 and method.teacher_steps >= 1")
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be > 0, got {self.temperature}")


def run(ctx) -> dict:
    cfg: Config = ctx.method
    mlm.require_mlm(ctx, "ki", [ctx.teacher_cfg])
    stages = ctx.stages()
    student = ctx.new_model(kind="mlm")

    teacher, teacher_name, teacher_curve, teacher_dir = get_teacher(ctx, stages, student.config.vocab_size)
    scratch = None
    if cfg.baseline:
        scratch = stages.run("scratch", scratch_key(ctx), lambda path: pretrain_stage(ctx, path),
                             share=True)
    scratch_curve = curve.read_csv(scratch.path / "curve.csv") if scratch else []

    rate = functools.partial(inheritance_rate, schedule=cfg.schedule, alpha0=cfg.alpha0,
                             inherit_steps=cfg.inherit_steps)
    extra = {"scratch (MLM only)": scratch_curve, f"teacher {teacher_name}": teacher_curve}
    result = mlm.pretrain(ctx, student, ctx.run_dir, loss=mlm.loss_fn(rate, cfg.temperature),
                          teacher=teacher, label="KI student", extra_curves={k: v for k, v in extra.items() if v},
                          title=f"KI {teacher_name} -> {ctx.model_cfg.name} ({cfg.schedule}, a0={cfg.alpha0}, "
                                f"N={cfg.inherit_steps})")
    if cfg.save_model:
        save_model(ctx, student, ctx.run_dir)
    return report(ctx, result, scratch, teacher_dir, teacher_name, scratch_curve)


# ---------------------------------------------------------------------------------------------------------
# The teacher


def get_teacher(ctx, stages: Stages, vocab_size: int):
    """(teacher model, its name, its validation curve, its model directory or None), the vocabulary
    checked against the student's before any teacher is trained."""
    from runner.models import load_tokenizer

    cfg: Config = ctx.method
    if cfg.teacher_run:
        model_dir = finished_run(cfg.teacher_run, key="method.teacher_run")
        teacher = load_model_dir(ctx, model_dir, kind="mlm")
        name = Path(cfg.teacher_run).name
        check_vocabulary(ctx, _saved_tokenizer(model_dir), teacher.config.vocab_size, name, vocab_size)
        points = curve.read_csv(model_dir.parent / "curve.csv") if (model_dir.parent / "curve.csv").exists() else []
        return teacher, name, points, model_dir
    teacher_cfg = ctx.teacher_cfg or model_option(cfg.teacher_model)
    mlm.require_mlm(ctx, "ki", [teacher_cfg])
    if not teacher_cfg.architecture:  # pretrained weights: the teacher as published (it needs its MLM head)
        teacher = ctx.new_model(kind="mlm", model_cfg=teacher_cfg)
        check_vocabulary(ctx, load_tokenizer(teacher_cfg), teacher.config.vocab_size, teacher_cfg.name, vocab_size)
        return teacher, teacher_cfg.name, [], None
    check_vocabulary(ctx, load_tokenizer(teacher_cfg), _vocab_size(teacher_cfg), teacher_cfg.name, vocab_size)
    train = dataclasses.replace(ctx.train, max_steps=cfg.teacher_steps, lr=cfg.teacher_lr or ctx.train.lr)
    sub = mlm.sub_context(ctx, model_cfg=teacher_cfg, train=train, seed=cfg.teacher_seed)
    key = {"model": dataclasses.asdict(teacher_cfg), "task": ctx.task_cfg.to_dict(), "train": dataclasses.asdict(train),
           "seed": cfg.teacher_seed}
    stage = stages.run("teacher", key, lambda path: pretrain_stage(sub, path), share=True)
    teacher = load_model_dir(ctx, stage.path / "model", kind="mlm", model_cfg=teacher_cfg)
    return teacher, teacher_cfg.name, curve.read_csv(stage.path / "curve.csv"), stage.path / "model"


def check_vocabulary(ctx, tokenizer, size: int | None, name: str, student_size: int) -> None:
    mlm.same_vocabulary(ctx.tokenizer, student_size, tokenizer, size, ctx.model_cfg.name, name)


def _vocab_size(model_cfg) -> int:
    """The output size a random-init model option will have (its config's default when not set)."""
    from transformers import AutoConfig

    arch = dict(model_cfg.architecture)
    return AutoConfig.for_model(arch.pop("model_type", model_cfg.family), **arch).vocab_size


def _saved_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def model_option(name: str):
    """A conf/model option by name (the default teacher when none is given)."""
    import yaml

    from runner.config import build
    from runner.models import ModelConfig

    path = CONF_MODELS / f"{name}.yaml"
    if not path.is_file():
        options = ", ".join(sorted(p.stem for p in CONF_MODELS.glob("*.yaml")))
        raise UserError(f"method.teacher_model: no model option '{name}'; options: {options}")
    return build(ModelConfig, yaml.safe_load(path.read_text()), f"model option {name}")


# ---------------------------------------------------------------------------------------------------------
# Stages and report


def pretrain_stage(ctx, path: Path) -> dict:
    """MLM pre-training of ctx's model into a stage folder: model/, curve.csv, curve.png."""
    model = ctx.new_model(kind="mlm")
    result = mlm.pretrain(ctx, model, path, output=f"{path.name}/checkpoints",
                          title=f"{ctx.model_cfg.name}: MLM pre-training")
    save_model(ctx, model, path)
    shutil.rmtree(path / "checkpoints", ignore_errors=True)  # done.json marks it finished: no resume needed
    return {"metrics": result["last"], "steps": result["steps"], "model": ctx.model_cfg.name}


def scratch_key(ctx) -> dict:
    return {"model": dataclasses.asdict(ctx.model_cfg), "task": ctx.task_cfg.to_dict(),
            "train": dataclasses.asdict(ctx.train), "seed": ctx.seed}


def report(ctx, result: dict, scratch, teacher_dir, teacher_name: str, scratch_curve) -> dict:
    metrics = dict(result["last"])
    ki_curve = curve.read_csv(ctx.run_dir / "curve.csv")
    if scratch is not None:
        metrics["scratch_loss"] = scratch.info["metrics"].get("loss")
        metrics["scratch_perplexity"] = scratch.info["metrics"].get("perplexity")
        fraction = curve.steps_fraction(ki_curve, scratch_curve)
        metrics["steps_fraction"] = fraction  # None: the KI student never reached the scratch final loss
        if fraction is not None:
            metrics["steps_saved"] = 1 - fraction
        stop = curve.kd_stop(dataclasses.asdict(ctx.method))
        if stop is not None and stop < result["steps"]:
            metrics["kd_stop_loss"] = curve.loss_at(ki_curve, stop)
            # None: the scratch student never got as low as the KI student was when KD stopped
            metrics["kd_stop_fraction"] = curve.kd_stop_fraction(ki_curve, scratch_curve, stop)
    out = {"metrics": metrics, "train": result["train"], "steps": result["steps"], "curve": "curve.csv",
           "teacher": {"name": teacher_name, "model": str(teacher_dir) if teacher_dir else None}}
    if scratch is not None:
        out["scratch"] = {"path": str(scratch.path), "reused": scratch.reused}
    return out
