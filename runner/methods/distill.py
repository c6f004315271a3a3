"""Knowledge distillation of a fine-tuned teacher into a smaller student: vanilla KD (Hinton et al. 2015;
DistilBERT's student initialisation), TinyBERT's layer matching (Jiao et al., Findings EMNLP 2020) and
SinKD's Sinkhorn term (Cui et al., LREC-COLING 2024).

    teacher   method.teacher_run (a finished run) | the `teacher` model option fine-tuned on the task |
              by default the `model` option fine-tuned on the task (a shared stage)        teacher/model
              with method.student_train_samples, on the student's labelled subset only (teacher_data=subset)
    student   copy: the teacher's embeddings + method.student_layers + head (PKD / DistilBERT), or the same
              cut of another finished run's model (method.student_run: a pruned model in a compress chain)
              random: a fresh model of the teacher's family, len(student_layers) layers, student_config
              model: the `model` option itself, cut to student_layers when given
              + a learned projection to the teacher's width when the widths differ (TinyBERT's W_fit)
    (cache)   the teacher's logits on the training set, once per teacher and data (shared)  teacher_logits/
    (two_stage) intermediate distillation: attention-score and hidden-state MSE only   intermediate/
    distil    fit(student, loss = method.loss over the student's and the frozen teacher's outputs)
    evaluate  the student on the task; the teacher's score and the measured student speedup beside it
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from runner import artifacts, speed
from runner.distill import layers
from runner.distill import student as students
from runner.distill.losses import INTERMEDIATE, LOSSES, Forward, LossParams
from runner.errors import UserError
from runner.evaluation import evaluate
from runner.models import arch, count_parameters
from runner.stages import Stages
from runner.teacher_logits import LogitCache, cached_logits
from runner.train import fit


@dataclass
class Config:
    """Mirror of conf/method/distill.yaml."""

    name: str = "distill"
    loss: Literal["kd", "tinybert", "sinkd"] = "kd"
    alpha: float = 0.5
    temperature: float = 2.0
    teacher_run: str | None = None
    student_run: str | None = None
    student_init: Literal["copy", "random", "model"] = "copy"
    student_layers: list[int] | str | None = field(default_factory=lambda: [0, 1, 2])
    student_config: dict[str, Any] | None = None
    layer_map: list[int] | None = None
    two_stage: bool = False
    intermediate_epochs: float = 3
    intermediate_lr: float = 5e-5
    beta: float = 0.8
    sinkhorn_temperature: float = 2.0
    sinkhorn_epsilon: float = 0.1
    sinkhorn_iterations: int = 20
    sinkhorn_scale: float = 0.001
    student_train_samples: int | None = None
    transfer: Literal["labeled", "all"] = "labeled"
    teacher_data: Literal["subset", "all"] = "subset"
    cache_teacher: bool = True
    save_model: bool = True

    def __post_init__(self):
        if self.temperature <= 0 or self.sinkhorn_temperature <= 0:
            raise ValueError(f"method.temperature / method.sinkhorn_temperature must be > 0, got "
                             f"{self.temperature} / {self.sinkhorn_temperature}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"method.alpha must be in [0, 1] (the KD share of the loss), got {self.alpha}")
        if self.sinkhorn_epsilon <= 0 or self.sinkhorn_iterations < 1:
            raise ValueError("method.sinkhorn_epsilon must be > 0 and method.sinkhorn_iterations >= 1")
        if self.two_stage and self.loss != "tinybert":
            raise ValueError("method.two_stage is TinyBERT's schedule; set method.loss=tinybert or two_stage=false")
        if self.student_run and self.student_init != "copy":
            raise ValueError("method.student_run is the model the student is cut from; set method.student_init=copy")
        if self.student_config and self.student_init != "random":
            raise ValueError("method.student_config reshapes a random-init student; set method.student_init=random")
        if self.student_layers is None and self.student_init != "model" and not self.student_run:
            raise ValueError(f"method.student_layers=null keeps every layer, which only student_init=model allows; "
                             f"give the teacher layers to keep, e.g. [0,1,2] (student_init={self.student_init})")
        if self.student_train_samples is not None and self.student_train_samples < 1:
            raise ValueError(f"method.student_train_samples must be a positive integer or null, "
                             f"got {self.student_train_samples}")
        if self.transfer == "all" and (self.student_train_samples is None or self.alpha == 0):
            raise ValueError("method.transfer=all keeps gold labels on method.student_train_samples rows and trains "
                             "the others on the KD term alone: set student_train_samples (e.g. 1000) and alpha > 0")
        if self.intermediate_epochs <= 0 or self.intermediate_lr <= 0:
            raise ValueError("method.intermediate_epochs and method.intermediate_lr must be > 0")


def run(ctx) -> dict:
    cfg: Config = ctx.method
    stages = Stages(ctx.run_dir, ctx.cache_dir and Path(ctx.cache_dir), ctx.log, namespace="distill")
    teacher_cfg = ctx.teacher_cfg or ctx.model_cfg

    # Everything that can be refused is checked on the untrained teacher shape, before any training.
    probe = load_teacher_run(ctx) if cfg.teacher_run else ctx.new_model(model_cfg=teacher_cfg)
    student = build_student(ctx, probe)
    layer_map = check_models(ctx, probe, student)

    teacher, teacher_metrics, teacher_id = prepare_teacher(ctx, stages, teacher_cfg, probe)
    if cfg.student_init == "copy" and not cfg.student_run:  # cut from the fine-tuned teacher, not the probe
        student = build_student(ctx, teacher)
    params = LossParams(alpha=cfg.alpha, temperature=cfg.temperature, beta=cfg.beta, layer_map=layer_map,
                        sinkhorn={"temperature": cfg.sinkhorn_temperature, "epsilon": cfg.sinkhorn_epsilon,
                                  "iterations": cfg.sinkhorn_iterations, "scale": cfg.sinkhorn_scale})
    if cfg.loss in INTERMEDIATE:
        params.projection = students.attach_projection(student, teacher, ctx.seed)

    train_data = student_data(ctx)
    cache = cached_logits(ctx, stages, teacher, teacher_id) if cfg.cache_teacher and (
        cfg.loss not in INTERMEDIATE or cfg.two_stage) else None
    if cfg.two_stage:  # TinyBERT: intermediate layers first, then the prediction layer alone
        inter = stages.run("intermediate", intermediate_key(ctx, teacher_id),
                           lambda path: distil_intermediate(ctx, student, teacher, params, train_data, path))
        student.load_state_dict(torch.load(inter.path / "student.pt", weights_only=True))
        params = dataclasses.replace(params, intermediate=False)
        ctx.info.setdefault("stages", {})["intermediate"] = stage_info(inter)
        students.detach_projection(student)
    result = fit(ctx, student, train_data, loss_fn=distillation_loss(cfg.loss, params, cache), teacher=teacher)
    students.detach_projection(student)

    speed.record(ctx, {"teacher": teacher, "student": student}, reference="teacher")
    ctx.info["parameters"] = count_parameters(student)  # without the projection, which is not kept
    ctx.info["student"] = {"layers": arch.num_layers(student)["encoder"], "hidden": arch.hidden_size(student),
                           "init": cfg.student_init, "layer_map": layer_map,
                           "teacher_parameters": count_parameters(teacher)["total"]}
    if cfg.save_model:
        artifacts.save_model(ctx, student, ctx.run_dir)
    return {"metrics": result["last"], "best": result["best"], "train": result["train"],
            "teacher": {**teacher_metrics, **teacher_data_info(ctx)}}


# ---------------------------------------------------------------------------------------------------------
# Teacher and student


def load_teacher_run(ctx):
    model_dir = artifacts.finished_run(ctx.method.teacher_run, key="method.teacher_run", task=ctx.task_cfg.name)
    return artifacts.load_model_dir(ctx, model_dir, model_cfg=ctx.teacher_cfg)


def prepare_teacher(ctx, stages: Stages, teacher_cfg, probe):
    """The frozen teacher, its task metrics and what identifies it (for the keys of later stages): a finished
    run as is, or a model fine-tuned on the task as a shared stage."""
    if ctx.method.teacher_run:
        return probe, evaluate(ctx, probe), str(Path(ctx.method.teacher_run).resolve())
    subset = teacher_subset(ctx)
    stage = artifacts.fine_tuned(ctx, stages, "teacher", model_cfg=teacher_cfg, train_dataset=subset,
                                 data_key=None if subset is None else {"labelled_subset": len(subset),
                                                                       "seed": ctx.seed})
    ctx.info.setdefault("stages", {})["teacher"] = stage_info(stage)
    teacher = artifacts.load_model_dir(ctx, stage.path / "model", model_cfg=teacher_cfg)
    return teacher, stage.info["metrics"], stage.digest


def stage_info(stage) -> dict:
    return {"status": stage.reused, "path": str(stage.path), "seconds": stage.info.get("seconds")}


def build_student(ctx, teacher):
    cfg: Config = ctx.method
    teacher_layers = arch.num_layers(teacher)["encoder"]
    if cfg.student_init == "copy":
        source = teacher
        if cfg.student_run:
            source = artifacts.load_model_dir(ctx, artifacts.finished_run(cfg.student_run, key="method.student_run",
                                                                         task=ctx.task_cfg.name))
        if cfg.student_layers is None:
            return source.train()
        return students.from_teacher(source, cfg.student_layers)
    if cfg.student_init == "random":
        return students.random_like(teacher, len(layers.kept_layers(cfg.student_layers, teacher_layers)),
                                    cfg.student_config or {})
    model = ctx.new_model()
    if cfg.student_layers is None:
        return model
    return arch.keep_layers(model, layers.kept_layers(cfg.student_layers, arch.num_layers(model)["encoder"]))


def check(ctx) -> None:
    """Refusals that need no weights (runner.preflight runs them before the run directory is taken)."""
    if ctx.task.is_mlm:
        raise UserError("method=distill distils a task head (classification or regression); "
                        f"task {ctx.task_cfg.name} is masked-LM")


def check_models(ctx, teacher, student) -> list[int]:
    """One-line refusals on the teacher and student shapes, before any training; returns the layer map of
    the intermediate losses ([] if none)."""
    cfg: Config = ctx.method
    students.check_pair(teacher, student, ctx.task.num_labels)
    if cfg.loss not in INTERMEDIATE:
        return []
    arch.attention_scores(teacher)  # refuses T5 with one line
    heads_t, heads_s = (arch.attentions(m, kind="self")[0].num_heads for m in (teacher, student))
    if heads_t != heads_s:
        raise UserError(f"TinyBERT's attention loss compares heads one to one: the teacher has {heads_t} heads, "
                        f"the student {heads_s}; give the student {heads_t} (method.student_config)")
    return layers.layer_map(cfg.layer_map, arch.num_layers(student)["encoder"], arch.num_layers(teacher)["encoder"])


# ---------------------------------------------------------------------------------------------------------
# Losses and the intermediate stage


def distillation_loss(name: str, params: LossParams, cache: LogitCache | None = None):
    """The fit() loss: student forward, teacher forward under no_grad (or its cached logits), method.loss's
    terms logged apart."""
    fn, intermediate = LOSSES[name], name in INTERMEDIATE and params.intermediate

    def loss_fn(model, inputs, teacher, state):
        labels = inputs.get("labels")
        features = {k: v for k, v in inputs.items() if k != "labels"}
        s, outputs = forward(model, features, intermediate)
        cached = None
        if cache is not None and not intermediate:
            cached = cache.lookup(features["input_ids"], features.get("attention_mask"))
        if cached is not None:
            t = Forward(cached)
        else:
            with torch.no_grad():
                t, _ = forward(teacher, features, intermediate)
        terms = fn(s, t, labels, params)
        total = terms.pop("loss")
        state.log(**{k: v.detach() for k, v in terms.items()})
        return total, outputs

    return loss_fn


def forward(model, features: dict, intermediate: bool) -> tuple[Forward, Any]:
    if not intermediate:
        outputs = model(**features)
        return Forward(outputs.logits), outputs
    with arch.attention_scores(getattr(model, "module", model)) as cap:  # DDP wraps the student
        outputs = model(**features)
    return Forward(outputs.logits, cap.scores, list(cap.hidden)), outputs


def intermediate_key(ctx, teacher_id: str) -> dict:
    cfg: Config = ctx.method
    return {"teacher": teacher_id, "init": cfg.student_init, "layers": cfg.student_layers,
            "config": cfg.student_config, "map": cfg.layer_map, "epochs": cfg.intermediate_epochs,
            "lr": cfg.intermediate_lr, "samples": cfg.student_train_samples, "transfer": cfg.transfer, "seed": ctx.seed, "train": dataclasses.asdict(ctx.train),
            "task": ctx.task_cfg.name, "model": ctx.model_cfg.name,
            **({"student_run": str(Path(cfg.student_run).resolve())} if cfg.student_run else {})}


def labelled_subset(ctx):
    """The low-data setting's labelled rows: a seeded subset of method.student_train_samples training
    examples; None when it is unset or covers the whole training set."""
    n, train = ctx.method.student_train_samples, ctx.data["train"]
    if n is None or n >= len(train):
        return None
    return train.shuffle(seed=ctx.seed).select(range(n))


def teacher_subset(ctx):
    """The rows the teacher stage learns from, when not the whole training set: with student_train_samples
    and teacher_data=subset, the student's own labelled subset (so a transfer set is really unlabelled for
    it too); teacher_data=all keeps the whole set (the teacher then saw more labels than the student)."""
    return labelled_subset(ctx) if ctx.method.teacher_data == "subset" else None


def teacher_data_info(ctx) -> dict:
    """results.json `teacher.train_samples` (labelled rows the teacher was fine-tuned on; null for a given
    method.teacher_run, whose data this run cannot know) and `teacher.data`."""
    if ctx.method.teacher_run:
        return {"train_samples": None, "data": "teacher_run (unknown)"}
    subset = teacher_subset(ctx)
    if subset is None:
        return {"train_samples": len(ctx.data["train"]), "data": "all"}
    return {"train_samples": len(subset), "data": "subset"}


def student_data(ctx):
    """The student's training set: the task's, or the low-data setting of method.student_train_samples labelled
    examples (a seeded subset, the teacher's own training set under teacher_data=subset). transfer=labeled: the
    student sees only those; transfer=all: it sees every training sentence, the others without their gold
    label (-100, NaN for regression), so they carry the KD term alone (Hinton et al.'s transfer set: the
    teacher labels sentences neither it nor the student has a gold label for)."""
    n, train = ctx.method.student_train_samples, ctx.data["train"]
    subset = labelled_subset(ctx)
    if subset is None:
        return train
    if ctx.method.transfer == "labeled":
        return subset
    rows = train.add_column("_row", list(range(len(train))))  # the same seeded subset as transfer=labeled
    labelled = set(rows.shuffle(seed=ctx.seed).select(range(n))["_row"])
    unlabelled = float("nan") if ctx.task.is_regression else -100

    def unlabel(example, i):
        return {"labels": example["labels"] if i in labelled else unlabelled}

    return train.map(unlabel, with_indices=True, keep_in_memory=True)


def distil_intermediate(ctx, student, teacher, params: LossParams, train_data, path: Path) -> dict:
    """TinyBERT's first task stage: attention and hidden MSE only, constant lr (no schedule, no warm-up)."""
    cfg: Config = ctx.method
    train = dataclasses.replace(ctx.train, epochs=cfg.intermediate_epochs, lr=cfg.intermediate_lr,
                                scheduler="constant", warmup_ratio=0.0)
    loss = distillation_loss("tinybert", dataclasses.replace(params, prediction=False))
    result = fit(ctx, student, train_data, output=f"{path.name}/checkpoints", loss_fn=loss, teacher=teacher,
                 train=train)
    torch.save(student.state_dict(), path / "student.pt")
    return {"train": result["train"], "metrics": result["last"]}
