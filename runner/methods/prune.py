"""Pruning: unstructured masks learned while fine-tuning, or structured removal of heads and FFN neurons.

Unstructured (method.pruner = magnitude | movement | soft_movement | pst; Zhu & Gupta 2017, Sanh et al. 2020,
Li et al. 2022):
    model   = the pretrained model (fine-pruning) or the dense fine-tuned one (method.start)
    masks   on the chosen matrices (torch parametrizations: W' = W * M in every forward)
    train   with the task loss (+ KD from the dense model, its logits cached once per dataset as a shared
            stage when method.cache_teacher, + the L1 penalty on soft-movement scores);
            a callback moves the cubic schedule: dense for `warmup`, final sparsity/threshold at `end`
              magnitude      M = top-|W|, recomputed every `update_every` steps
              movement       M = TopK(S), S learned through the straight-through estimator
              soft_movement  M = 1[sigmoid(S) > tau]
              cap            movement + CAP's contrastive terms (pre-trained, fine-tuned and snapshot banks,
                             runner.prune.contrastive; a snapshot every method.cap_snapshot_every steps)
              pst            M = TopK(|W + UV| + AB + R + C), W frozen: only U, V, A, B, R, C (and the
                             task head) train, at method.pst_lr; results.json `trainable` counts them
    bake    W * M into the weights; report the measured sparsity per matrix and overall; save

Structured (heads | ffn | structured = both; Michel et al. 2019 for heads):
    dense   = the fine-tuned model (method.base_run, or fine-tuned here through the stage cache)
    heads   gates on heads; mask the least important share per round, re-score, until `heads` are masked
            (method.head_curve: score the gated model after every round: the accuracy-vs-heads curve;
            head_importance=random: the same rounds in a seeded random order, the control of that curve;
            attattr / entropy: orders read from the attention maps once, runner.prune.attribution)
    ffn     neuron importance (taylor | magnitude); keep the top 1 - `ffn` per layer (gates 0 elsewhere), in
            method.ffn_layers only; method.fold_means folds the removed neurons' mean output into W_out's bias
    skill   (skill neurons, Wang et al. 2022) the same, ranked by each neuron's predictivity of the label
            (runner.prune.skill), means folded by default
    prune   physically remove the masked heads' Q/K/V rows and O columns, the neurons' W_in rows and
            W_out columns (runner.models.arch); outputs equal the gated model's
    speed   dense vs pruned, measured side by side (runner.speed)
    recover fine-tune the pruned model (method.recovery_epochs; KD if alpha_kd > 0), evaluate, save with
            its pruning plan (runner.prune.plan.load_pruned reloads it)
    steps   (method.iterative_steps > 1 or method.contrastive: CAP's structured schedule) the masks grow in
            steps, each followed by recovery training, with CAP's contrastive terms against the pre-trained,
            fine-tuned and snapshot banks when method.contrastive (runner.prune.iterative)
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import TrainerCallback

from runner import artifacts, speed
from runner.errors import UserError
from runner.evaluation import evaluate
from runner.models import arch, count_parameters, select_trainable
from runner.prune import iterative, losses, masks, plan, skill, structured
from runner.prune.schedule import CubicSchedule
from runner.stages import Stages
from runner.teacher_logits import cached_logits
from runner.train import fit

UNSTRUCTURED = ("magnitude", "movement", "soft_movement", "pst", "cap")
STRUCTURED = ("heads", "ffn", "structured", "skill")


@dataclass
class Config:
    """Mirror of conf/method/prune.yaml."""

    name: str = "prune"
    pruner: str = "movement"
    base_run: str | None = None
    teacher_run: str | None = None
    dense_epochs: float | None = None
    start: Literal["pretrained", "dense"] = "pretrained"
    matrices: list[str] = field(default_factory=lambda: ["attention", "ffn"])
    sparsity: float = 0.9
    scope: Literal["local", "global"] = "local"
    warmup: float = 0.1
    end: float = 0.7
    update_every: int = 10
    scores_lr: float = 0.01
    score_init: float = 0.0
    threshold: float = 0.1
    l1_lambda: float = 400.0
    min_keep: float = 0.005
    freeze_embeddings: bool = True
    alpha_kd: float = 0.0
    temperature: float = 2.0
    cache_teacher: bool = True
    pst_rank: int = 8
    pst_mask_rank: int = 8
    pst_beta: float = 1.0
    pst_alpha1: float = 1.0
    pst_alpha2: float = 1.0
    pst_lr: float | None = None
    heads: float = 0.3
    head_importance: Literal["gradient", "magnitude", "random", "attattr", "entropy"] = "gradient"
    order_seed: int | None = None
    attr_examples: int = 200
    attr_steps: int = 20
    head_step: float = 0.1
    head_curve: bool = False
    ffn: float = 0.5
    ffn_importance: Literal["taylor", "magnitude"] = "taylor"
    ffn_scope: Literal["layer", "global"] = "layer"
    ffn_layers: list[int] | None = None
    fold_means: bool | None = None
    skill_examples: int = 512
    skill_position: Literal["cls", "mean"] = "cls"
    importance_batches: int = 16
    allow_empty_layers: bool = False
    recovery_epochs: float = 1.0
    iterative_steps: int = 1
    contrastive: bool = False
    cap_pooling: Literal["mean", "cls"] = "mean"
    cap_unsup: float = 0.3
    cap_sup: float = 3.0
    cap_tau: float = 0.1
    cap_extra: int = 4096
    cap_snapshot_every: int = 100

    def __post_init__(self):
        if self.pruner not in UNSTRUCTURED + STRUCTURED:
            raise ValueError(f"unknown method.pruner '{self.pruner}'; known: {', '.join(UNSTRUCTURED + STRUCTURED)}")
        for key in ("sparsity", "heads", "ffn"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise ValueError(f"method.{key}={value!r} is outside [0, 1); it is the share removed, e.g. 0.9")
        if not 0 <= self.warmup < self.end <= 1:
            raise ValueError(f"method.warmup={self.warmup} and method.end={self.end} need 0 <= warmup < end <= 1")
        if not 0 <= self.alpha_kd <= 1:
            raise ValueError(f"method.alpha_kd={self.alpha_kd} is outside [0, 1]")
        if not 0 < self.head_step <= 1 or not 0 <= self.threshold < 1 or not 0 <= self.min_keep <= 1:
            raise ValueError("method.head_step must be in (0, 1], method.threshold in [0, 1), method.min_keep in [0, 1]")
        if self.dense_epochs is not None and self.dense_epochs <= 0:
            raise ValueError(f"method.dense_epochs={self.dense_epochs} must be > 0, or null (= train.epochs)")
        if self.iterative_steps < 1 or self.cap_tau <= 0 or self.cap_extra < 0 or self.cap_snapshot_every < 0:
            raise ValueError("method.iterative_steps must be >= 1, method.cap_tau > 0, method.cap_extra and "
                             "method.cap_snapshot_every >= 0")
        if self.contrastive and self.pruner not in ("heads", "ffn", "structured"):
            raise ValueError(f"method.contrastive=true is CAP's structured mode (pruner heads, ffn or structured); "
                             f"for unstructured CAP use method.pruner=cap (got pruner={self.pruner})")
        if (self.iterative_steps > 1 or self.contrastive) and (self.pruner == "skill" or self.fold_means):
            raise ValueError("method.pruner=skill and method.fold_means prune in one step; drop "
                             "method.iterative_steps / method.contrastive")
        if self.contrastive and self.recovery_epochs <= 0:
            raise ValueError("method.contrastive=true trains with the contrastive terms after each step: set "
                             "method.recovery_epochs > 0")
        if self.skill_examples < 2:
            raise ValueError(f"method.skill_examples={self.skill_examples} must be >= 2 (half set the baseline, "
                             "half score the neurons)")
        if self.pst_rank < 1 or self.pst_mask_rank < 1 or (self.pst_lr is not None and self.pst_lr <= 0):
            raise ValueError(f"method.pst_rank={self.pst_rank} and method.pst_mask_rank={self.pst_mask_rank} must be "
                             f">= 1 and method.pst_lr={self.pst_lr} > 0 (or null = train.lr)")
        if self.attr_examples < 1 or self.attr_steps < 1:
            raise ValueError(f"method.attr_examples={self.attr_examples} and method.attr_steps={self.attr_steps} "
                             "must be >= 1 (AttAttr: examples scored, Riemann points of the integral)")
        if self.update_every < 1 or self.importance_batches < 1 or self.recovery_epochs < 0:
            raise ValueError("method.update_every and method.importance_batches must be >= 1, recovery_epochs >= 0")
        if self.order_seed is not None and self.head_importance != "random":
            raise ValueError(f"method.order_seed seeds the random head order; set method.head_importance=random "
                             f"or drop method.order_seed (head_importance={self.head_importance})")
        if self.scope == "global" and self.pruner != "magnitude":
            raise ValueError(f"method.scope=global is for magnitude pruning; {self.pruner} scores are per matrix")


def run(ctx) -> dict:
    cfg: Config = ctx.method
    stages = Stages(ctx.run_dir, ctx.cache_dir and Path(ctx.cache_dir), ctx.log, "prune")
    if (cfg.pruner == "cap" or cfg.contrastive) and arch.family(ctx.new_model()) == "t5":
        raise UserError("CAP's contrastive terms compare encoder sentence vectors of BERT-family models; T5 is not "
                        "supported (drop method.contrastive, or use method.pruner=movement)")
    if cfg.pruner in UNSTRUCTURED:
        return fine_prune(ctx, stages)
    check_structure(ctx)
    return prune_structure(ctx, stages)


def check_structure(ctx) -> None:
    """Refuse before any training what structured pruning cannot do with this model (a fresh copy is probed)."""
    cfg: Config = ctx.method
    if cfg.pruner in ("ffn", "structured", "skill"):
        ffns = arch.ffns(ctx.new_model(), stack="encoder")
        bad = [i for i in cfg.ffn_layers or [] if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(ffns)]
        if bad or (cfg.ffn_layers is not None and not cfg.ffn_layers):
            raise UserError(f"method.ffn_layers={cfg.ffn_layers}: give encoder layer indices in [0, {len(ffns) - 1}], "
                            "or null for every layer")
        if fold_means(cfg) and any(f.w_out.bias is None for f in ffns):
            raise UserError("method.fold_means needs a bias on the FFN output (this model's W_out has none, e.g. "
                            "T5): set method.fold_means=false")
    if cfg.pruner == "skill" and (ctx.task.is_regression or ctx.task.num_labels != 2):
        raise UserError(f"method.pruner=skill needs a binary classification task; {ctx.task_cfg.name} has "
                        f"{'a regression target' if ctx.task.is_regression else f'{ctx.task.num_labels} labels'} "
                        "(the paper splits multi-class tasks into binary subtasks, not done here)")
    if cfg.pruner not in ("heads", "structured"):
        return
    atts = arch._encoder_attentions(ctx.new_model())  # T5: one-line refusal
    layers, heads = len(atts), atts[0].num_heads
    if not cfg.allow_empty_layers and round(cfg.heads * layers * heads) > layers * (heads - 1):
        raise UserError(f"method.heads={cfg.heads} removes {round(cfg.heads * layers * heads)} of {layers * heads} "
                        f"heads, which empties a layer; use method.heads <= {(heads - 1) / heads:.3f} or set "
                        "method.allow_empty_layers=true")


def dense_stage(ctx, stages):
    """The dense fine-tune (shared stage): base_run, or the model fine-tuned here with train.*, for
    method.dense_epochs epochs when set (a longer pruning run keeps the dense model of the shorter ones)."""
    cfg: Config = ctx.method
    train = None if cfg.dense_epochs is None else dataclasses.replace(ctx.train, epochs=cfg.dense_epochs, max_steps=-1)
    return artifacts.fine_tuned(ctx, stages, "dense", base_run=cfg.base_run, train=train)


def dense_model(ctx, stages, kd: bool = False):
    """The fine-tuned dense model (base_run, or fine-tuned here and shared through the stage cache), its
    metrics, the KD teacher (method.teacher_run, default the dense model itself) and, when there is KD
    (`kd`) and method.cache_teacher, the teacher's logits on the training set."""
    cfg: Config = ctx.method
    stage = dense_stage(ctx, stages)
    model = artifacts.load_model_dir(ctx, stage.path / "model")
    teacher, teacher_id = model, stage.digest
    if kd and cfg.teacher_run:
        teacher_dir = artifacts.finished_run(cfg.teacher_run, key="method.teacher_run", task=ctx.task_cfg.name)
        teacher, teacher_id = artifacts.load_model_dir(ctx, teacher_dir), str(teacher_dir.resolve())
    cache = None
    if kd and cfg.cache_teacher:
        cache = cached_logits(ctx, stages, teacher, teacher_id)
    return model, teacher, stage.info.get("metrics", {}), cache


# ---------------------------------------------------------------------------------------------------------
# Unstructured: masks during fine-tuning


class Schedule(TrainerCallback):
    """Moves the masks along the cubic schedule at the start of every optimizer step."""

    def __init__(self, cfg: Config, found: dict, modules: dict):
        self.cfg, self.found, self.modules = cfg, found, modules
        self.schedule: CubicSchedule | None = None
        self.final_done = False  # magnitude: masks set at the final sparsity, then fixed (Zhu & Gupta)

    def level(self, step: int) -> float:
        return self.schedule(step) if self.schedule else 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        cfg = self.cfg
        final = cfg.threshold if cfg.pruner == "soft_movement" else cfg.sparsity
        self.schedule = CubicSchedule(final=final, total_steps=max(state.max_steps, 1), warmup=cfg.warmup,
                                      end=cfg.end)
        self.apply(state.global_step, force=True)

    def on_step_begin(self, args, state, control, **kwargs):
        self.apply(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        # the saved model has exactly the final level (also when `end` is 1, or training stopped early)
        self.apply(self.schedule.total_steps, force=not self.final_done)

    def apply(self, step: int, force: bool = False) -> None:
        if self.cfg.pruner != "magnitude":
            masks.set_level(self.found, self.level(step))
            return
        reached = step >= self.cfg.end * self.schedule.total_steps
        if force or (not reached and step % self.cfg.update_every == 0) or (reached and not self.final_done):
            masks.update_magnitude(self.modules, self.level(step), self.cfg.scope)
            self.final_done = reached


def fine_prune(ctx, stages, callbacks=()) -> dict:
    """`callbacks`: extra TrainerCallbacks beside the schedule (recipes/movement-pruning/diagnose.py's probe)."""
    cfg: Config = ctx.method
    teacher, dense_metrics, cache = None, None, None
    dense = None
    if cfg.alpha_kd > 0 or cfg.start == "dense" or cfg.pruner == "cap":
        dense, teacher, dense_metrics, cache = dense_model(ctx, stages, kd=cfg.alpha_kd > 0)
    model = ctx.new_model() if cfg.start == "pretrained" else artifacts.load_model_dir(
        ctx, dense_stage(ctx, stages).path / "model")
    total = count_parameters(model)["total"]
    if cfg.freeze_embeddings:
        select_trainable(model, [r"embeddings\."], [])
    modules = masks.select(model, cfg.matrices)
    pst = dict(rank=cfg.pst_rank, mask_rank=cfg.pst_mask_rank, beta=cfg.pst_beta, alpha1=cfg.pst_alpha1,
               alpha2=cfg.pst_alpha2)
    found = masks.attach(modules, "movement" if cfg.pruner == "cap" else cfg.pruner, cfg.score_init, pst=pst)
    if cfg.pruner == "soft_movement":
        for m in found.values():
            m.min_keep = cfg.min_keep
    scores = masks.scores(model)
    if cfg.pruner == "pst":  # only the PST parameters and the task head train (the reference trains no head)
        head = tuple(f"{name}." for name in arch.head_names(model))
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(head) or any(p is s for s in scores))
    schedule = Schedule(cfg, found, modules)
    weights = [p for p in model.parameters() if p.requires_grad and all(p is not s for s in scores)]
    score_lr = (cfg.pst_lr or ctx.train.lr) if cfg.pruner == "pst" else cfg.scores_lr
    groups = [{"params": weights}] + ([{"params": scores, "lr": score_lr, "weight_decay": 0.0}]
                                      if scores else [])
    trainable = {"parameters": sum(p.numel() for p in weights + scores), "mask": sum(p.numel() for p in scores),
                 "weights": sum(p.numel() for p in weights), "model": total}
    trainable["share"] = trainable["parameters"] / total
    ctx.log(f"prune: {trainable['parameters']} trainable ({100 * trainable['share']:.2f}% of {total}): "
            f"{trainable['mask']} mask/update, {trainable['weights']} weights")

    banks, extra = None, []
    if cfg.pruner == "cap":  # CAP on movement: pre-trained, fine-tuned and snapshot banks (runner.prune.contrastive)
        device = "cuda" if ctx.hardware.device == "cuda" else "cpu"
        banks = iterative.build_banks(ctx, dense, device)
        extra = [iterative.Snapshots(ctx, banks, cfg.cap_snapshot_every, ctx.path("snapshots"), device)]
    task_loss = losses.pruning_loss(cfg, cache, banks, ctx.seed) if (cfg.alpha_kd > 0 or banks) else None

    def loss_fn(model, inputs, teacher, state):
        if task_loss is not None:
            loss, outputs = task_loss(model, inputs, teacher, state)
        else:
            outputs = model(**inputs)
            loss = outputs.loss
        if cfg.pruner == "soft_movement":
            l1 = masks.penalty(found)
            state.log(l1=l1)
            loss = loss + cfg.l1_lambda * schedule.schedule.progress(state.step) * l1
        return loss, outputs

    result = fit(ctx, model, loss_fn=loss_fn, callbacks=[schedule, *extra, *callbacks], param_groups=groups,
                 teacher=teacher if cfg.alpha_kd > 0 else None)
    masks.bake(modules)  # W * M becomes the weight: evaluated and saved as such
    measured = masks.sparsity(modules)
    ctx.log(f"prune: {measured['overall']:.4f} of {measured['pruned_parameters']} weights are zero")
    metrics = evaluate(ctx, model)
    artifacts.save_model(ctx, model, ctx.run_dir)
    shutil.rmtree(ctx.path("checkpoints"), ignore_errors=True)  # weights + scores + optimizer: large, done with
    shutil.rmtree(ctx.path("snapshots"), ignore_errors=True)
    out = {"metrics": metrics, "best": result["best"], "train": result["train"], "sparsity": measured,
           "remaining": 1 - measured["overall"], "trainable": trainable}
    if dense_metrics is not None:
        out["dense"] = dense_metrics
    return out


# ---------------------------------------------------------------------------------------------------------
# Structured: heads and FFN neurons, physically removed


def importance_batches(ctx, rows: int | None = None):
    """A fresh pass over the first `rows` labelled training rows (default `importance_batches` batches), in a
    fixed order."""
    from torch.utils.data import DataLoader

    from runner.tasks.collators import collator, model_inputs

    data = ctx.data["train"]
    rows = ctx.method.importance_batches * ctx.train.eval_batch_size if rows is None else rows
    data = data.select(range(min(len(data), rows)))
    loader = DataLoader(model_inputs(data), batch_size=ctx.train.eval_batch_size, shuffle=False,
                        collate_fn=collator(ctx.tokenizer, mlm=False))
    return lambda: iter(loader)


FIXED_ORDERS = ("random", "attattr", "entropy")  # scored once on the dense model, then masked in rounds


def prune_structure(ctx, stages) -> dict:
    cfg: Config = ctx.method
    dense, teacher, dense_metrics, cache = dense_model(ctx, stages, kd=cfg.alpha_kd > 0 and cfg.recovery_epochs > 0)
    model = copy.deepcopy(dense)
    device = "cuda" if ctx.hardware.device == "cuda" else "cpu"
    model.to(device)
    batches = importance_batches(ctx)
    heads = neurons = None
    curve: dict[str, dict] = {}  # method.head_curve: {heads masked: share and metrics of the gated model}

    def score_round(masked: int) -> None:
        total = sum(a.num_heads for a in arch._encoder_attentions(model))
        curve[str(masked)] = {"share": masked / total, **evaluate(ctx, model)}
        ctx.log(f"heads: {masked}/{total} masked, {ctx.task.main_metric} "
                f"{curve[str(masked)].get(ctx.task.main_metric, float('nan')):.4f}")

    order = None
    if cfg.pruner in ("heads", "structured") and cfg.head_importance in FIXED_ORDERS and cfg.heads > 0:
        rows = importance_batches(ctx, cfg.attr_examples) if cfg.head_importance in ("attattr", "entropy") else None
        order = structured.fixed_order(model, rows, cfg.head_importance, order_seed(ctx), cfg.attr_examples,
                                       cfg.attr_steps)
    if cfg.iterative_steps > 1 or cfg.contrastive:
        return prune_in_steps(ctx, stages, dense, teacher, dense_metrics, cache, batches, order)
    if cfg.pruner in ("heads", "structured"):
        heads = structured.mask_heads(model, batches, cfg.heads, cfg.head_step, cfg.head_importance,
                                      cfg.allow_empty_layers, log=ctx.log,
                                      on_round=score_round if cfg.head_curve else None, seed=order_seed(ctx),
                                      order=order)
    predictive = None
    if cfg.pruner in ("ffn", "structured", "skill"):
        means = None
        if cfg.pruner == "skill" or fold_means(cfg):
            feats, means, labels = skill.activations(model, importance_batches(ctx, cfg.skill_examples),
                                                     cfg.skill_position)
        if cfg.pruner == "skill":
            imp = [skill.predictivity(f, labels) for f in feats]
            predictive = imp
        else:
            imp = structured.ffn_importance(model, cfg.ffn_importance, batches)
        neurons = structured.select_neurons(imp, cfg.ffn, cfg.ffn_scope, cfg.ffn_layers)
        if means is not None and fold_means(cfg):
            skill.fold_means(model, neurons, means)  # before the gates: the gated model is the exact reference
        structured.gate_neurons(model, neurons)
    gated = evaluate(ctx, model)
    structured.prune_masked(model, heads, neurons, cfg.allow_empty_layers)
    pruned = evaluate(ctx, model)  # the same as `gated`: physical removal is exact
    speed.record(ctx, {"dense": dense, "pruned": model}, reference="dense")
    if curve:
        ctx.info["curve"] = {"0": {"share": 0.0, **dense_metrics}, **curve}
    out = {"dense": dense_metrics, "before_recovery": pruned, "gated": gated, "removed_heads": heads,
           **({"head_order_seed": order_seed(ctx)} if cfg.head_importance == "random" and heads is not None else {}),
           **({"head_scores": [[round(float(v), 6) for v in row] for row in order]} if order is not None else {}),
           "sizes": arch.layer_sizes(model),
           **({"kept_neurons": [len(n) for n in neurons], "folded_means": fold_means(cfg)} if neurons else {}),
           **({"predictivity": predictivity_summary(predictive, neurons)} if predictive is not None else {}),
           "parameters_kept": count_parameters(model)["total"] / count_parameters(dense)["total"]}
    if cfg.recovery_epochs > 0:
        result = fit(ctx, model, output="recovery", teacher=teacher if cfg.alpha_kd > 0 else None,
                     loss_fn=losses.pruning_loss(cfg, cache) if cfg.alpha_kd > 0 else None,
                     train=dataclasses.replace(ctx.train, epochs=cfg.recovery_epochs))
        out["train"] = result["train"]
    out["metrics"] = evaluate(ctx, model)
    saved = artifacts.save_model(ctx, model, ctx.run_dir)
    shutil.rmtree(ctx.path("recovery"), ignore_errors=True)
    plan.save_plan(model, saved)  # beside the weights: runner.prune.plan.load_pruned rebuilds the shapes
    return out


def prune_in_steps(ctx, stages, dense, teacher, dense_metrics, cache, batches, order) -> dict:
    """CAP's structured schedule (runner.prune.iterative): the masks grow in method.iterative_steps steps, each
    followed by recovery training, with the contrastive terms when method.contrastive."""
    cfg: Config = ctx.method
    model, heads, neurons, steps = iterative.prune_iteratively(ctx, stages, dense, teacher, cache, batches, order)
    speed.record(ctx, {"dense": dense, "pruned": model}, reference="dense")
    out = {"dense": dense_metrics, "steps": steps, "before_recovery": steps[-1]["gated"], "removed_heads": heads,
           "contrastive": cfg.contrastive, "sizes": arch.layer_sizes(model),
           **({"kept_neurons": [len(n) for n in neurons]} if neurons else {}),
           "parameters_kept": count_parameters(model)["total"] / count_parameters(dense)["total"],
           "metrics": evaluate(ctx, model)}  # the last step's, now on the physically pruned model
    saved = artifacts.save_model(ctx, model, ctx.run_dir)
    plan.save_plan(model, saved)
    iterative.drop_step_states(ctx.run_dir, cfg.iterative_steps)
    return out


def fold_means(cfg: Config) -> bool:
    """method.fold_means, null = on for skill neurons (the paper's pruning), off otherwise."""
    return cfg.pruner == "skill" if cfg.fold_means is None else bool(cfg.fold_means)


def predictivity_summary(predictive, neurons) -> list[dict]:
    """Per layer: the best neuron's predictivity, the mean over all and over the kept ones."""
    out = []
    for p, keep in zip(predictive, neurons, strict=True):
        out.append({"max": round(float(p.max()), 4), "mean": round(float(p.mean()), 4),
                    "kept_mean": round(float(p[keep].mean()), 4) if keep else None})
    return out


def order_seed(ctx) -> int:
    """The seed of head_importance=random's order: method.order_seed, else the run's seed (several orders on
    one dense model: method.order_seed=1,2,3 at one seed, since the dense stage is keyed by the run's seed)."""
    return ctx.seed if ctx.method.order_seed is None else ctx.method.order_seed
