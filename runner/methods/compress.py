"""Composed compression (BMCook: pruning, distillation, MoEfication and int8 in one recipe): a chain of
methods, each run as it runs alone, on the previous step's model.

    dense     method.base_run, or the model fine-tuned here (a shared stage): the chain's start, the
              reference every step is divided by, and the KD teacher of every step that distils
    steps     for each name in method.steps, in order: that method (runner.registry) with its own keys
              (method.<step>), in <run dir>/step<i>-<name>/, its base the previous step's model:
                prune        base_run = previous (start=dense for the unstructured pruners), teacher_run = dense
                distill      student cut from the previous model (student_run), teacher_run = dense
                moefication  base_run = previous, the MoE model saved at its one ratio (save_ratio)
                quantize     base_run = previous, reference_run = teacher_run = dense
              A step is a stage keyed by everything before it, shared through the stage cache: the chains
              P, P+D and P+D+Q compute P once. A killed chain resumes at the first unfinished step (and that
              step from its own last checkpoint).
    evaluate  every step's saved model reloaded as it deploys (runner.quant.deploy.load_deployed): metric and %
              of dense
    speed     the dense fp32 torch model and every step's model, timed side by side (runner.speed)

Orders that cannot run are refused before any training: quantize must be last (an int8 model is a
deployment artefact), nothing but quantize may follow moefication (a MoE FFN has no neurons to prune or
layers to copy), and int8 after moefication runs in torch (ONNX export of the MoE FFN is not supported).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import artifacts, registry, speed
from runner.config import build
from runner.errors import UserError
from runner.evaluation import evaluate
from runner.models import count_parameters
from runner.quant import deploy
from runner.results import RESERVED, RunDir

STEPS = ("prune", "distill", "moefication", "quantize")
# The keys of each step that the chain sets itself: a user value would be silently overwritten.
CHAIN_KEYS = {"prune": ("base_run", "teacher_run"), "distill": ("teacher_run", "student_run"),
              "moefication": ("base_run", "save_ratio"), "quantize": ("base_run", "reference_run", "teacher_run")}


@dataclass
class Config:
    """Mirror of conf/method/compress.yaml (each step's section mirrors that method's own Config)."""

    name: str = "compress"
    steps: list[str] = field(default_factory=lambda: ["prune", "distill", "quantize"])
    base_run: str | None = None
    speed_repeats: int = 5
    prune: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)
    moefication: dict[str, Any] = field(default_factory=dict)
    quantize: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        unknown = [s for s in self.steps if s not in STEPS]
        if not self.steps or unknown:
            raise ValueError(f"method.steps={list(self.steps)}: {'unknown step ' + ', '.join(unknown) if unknown else 'empty'}"
                             f"; give an ordered list of {', '.join(STEPS)}, e.g. [prune,distill,quantize]")
        if len(set(self.steps)) != len(self.steps):
            raise ValueError(f"method.steps={list(self.steps)} repeats a step; each method runs once in a chain")
        if "quantize" in self.steps and self.steps[-1] != "quantize":
            raise ValueError(f"method.steps={list(self.steps)}: quantize must be the last step (nothing is trained "
                             "or cut after int8: an int8 model is a deployment artefact)")
        if "moefication" in self.steps:
            after = self.steps[self.steps.index("moefication") + 1:]
            if [s for s in after if s != "quantize"]:
                raise ValueError(f"method.steps={list(self.steps)}: only quantize may follow moefication (a MoE FFN "
                                 "has no neurons to prune and no layers to copy); put moefication later")
        if self.speed_repeats < 0:
            raise ValueError(f"method.speed_repeats must be >= 0 (0 skips the timing), got {self.speed_repeats}")

    def step(self, name: str):
        """The step's own Config (its method's dataclass and checks), with the chain's keys left unset."""
        values = dict(getattr(self, name))
        values.setdefault("name", name)
        if values["name"] != name:
            raise UserError(f"method.{name}.name={values['name']}: the section of step {name} configures {name}")
        for key in CHAIN_KEYS[name]:
            if values.get(key) is not None:
                raise UserError(f"method.{name}.{key} is set by the chain (the previous step's or the dense model); "
                                "give the dense model as method.base_run and drop this key")
        cfg = build(registry.config_class(name), values, f"method.{name}")
        if name == "moefication" and len(cfg.ratios) != 1:
            raise UserError(f"method.moefication.ratios={cfg.ratios}: a chain deploys one share of experts per "
                            "token; give one, e.g. [0.25]")
        if name == "quantize" and "moefication" in self.steps and (cfg.backend == "onnxruntime" or cfg.qat):
            raise UserError("quantize after moefication runs in torch without QAT (the MoE FFN does not export to "
                            "ONNX): set method.quantize.backend=torch method.quantize.qat=false")
        if name == "distill" and cfg.student_init != "copy":
            raise UserError("method.distill.student_init: a chain's student is cut from the previous step's model; "
                            "set it to copy")
        return cfg


def check(ctx) -> None:
    """Every step's config and its method's own checks, before anything trains (runner.preflight)."""
    cfg: Config = ctx.method
    for name in cfg.steps:
        step_cfg = cfg.step(name)
        checker = getattr(importlib.import_module(registry.get(name).__module__), "check", None)
        if checker is not None:
            checker(sub_context(ctx, ctx.run_dir, step_cfg))


def run(ctx) -> dict:
    cfg: Config = ctx.method
    stages = ctx.stages()
    dense = artifacts.fine_tuned(ctx, stages, "dense", base_run=cfg.base_run)
    dense_run = dense.path if not cfg.base_run else Path(cfg.base_run)
    dense_model = artifacts.load_model_dir(ctx, dense.path / "model")
    dense_metrics = evaluate(ctx, dense_model)
    main = ctx.task.main_metric

    previous, previous_digest, rows = dense_run, dense.digest, []
    for i, name in enumerate(cfg.steps, start=1):
        own = cfg.step(name)
        # keyed by the digests of what came before, not by paths: another run's chain shares the stage
        key = {"step": name, "after": previous_digest, "dense": dense.digest, "config": dataclasses.asdict(own),
               "seed": ctx.seed, "task": dataclasses.asdict(ctx.task_cfg), "train": dataclasses.asdict(ctx.train),
               "model": dataclasses.asdict(ctx.model_cfg)}
        step_cfg = chained(own, previous, dense_run)
        stage = stages.run(f"step{i}-{name}", key, lambda path, c=step_cfg: run_step(ctx, c, path), share=True)
        model = deploy.load_deployed(ctx, stage.path / "model")
        metrics = evaluate(ctx, model)
        rows.append({"step": name, "chain": "+".join(cfg.steps[:i]), "path": str(stage.path), "status": stage.reused,
                     "metric": metrics.get(main), "relative": relative(metrics.get(main), dense_metrics.get(main)),
                     "parameters": stage.info["parameters"], "size_mb": stage.info["size_mb"],
                     "seconds": stage.info.get("seconds")})
        ctx.log(f"compress step {i} {name}: {main} {metrics.get(main):.4f} "
                f"({100 * rows[-1]['relative']:.1f}% of dense), {stage.info['size_mb']} MB")
        previous, previous_digest = stage.path, stage.digest
    if cfg.speed_repeats:
        timed = speed_table(ctx, dense_model, rows)
        for row in rows:
            for shape in speed.SHAPES:
                label = f"{shape[0]}x{shape[1]}"
                row[f"speedup_{label}"] = timed[label]["speedup"][row["chain"]]
    final = rows[-1]
    out = {"metrics": {main: final["metric"], "relative": final["relative"],
                       **{k: v for k, v in final.items() if k.startswith("speedup_")}},
           "dense": {**dense_metrics, "parameters": count_parameters(dense_model)["total"],
                     "size_mb": artifacts.size_mb(dense.path / "model")},
           "steps": rows,
           "deployed": {"model": final["chain"], "parameters": final["parameters"], "size_mb": final["size_mb"]}}
    print_table(ctx, out)
    return out


def chained(step_cfg, previous: Path, dense: Path):
    """The step's config with the chain's keys: its base is the previous model, the dense model its teacher."""
    name, prev, dense = step_cfg.name, str(previous), str(dense)
    if name == "prune":
        start = step_cfg.start if step_cfg.pruner in ("heads", "ffn", "structured") else "dense"
        return dataclasses.replace(step_cfg, base_run=prev, teacher_run=dense, start=start)
    if name == "distill":
        return dataclasses.replace(step_cfg, teacher_run=dense, student_run=None if prev == dense else prev)
    if name == "moefication":
        return dataclasses.replace(step_cfg, base_run=prev, save_ratio=step_cfg.ratios[0])
    return dataclasses.replace(step_cfg, base_run=prev, reference_run=dense, teacher_run=dense)


def sub_context(ctx, run_dir: Path, step_cfg):
    """The run context of one step: its own run directory and method config; the same task, data,
    tokenizer, model, training and hardware settings (the loaded data is shared, not reloaded)."""
    sub = dataclasses.replace(ctx, run_dir=Path(run_dir), method=step_cfg, info={})
    for cached in ("task", "tokenizer", "data"):
        if cached in ctx.__dict__:
            sub.__dict__[cached] = ctx.__dict__[cached]
    return sub


def run_step(ctx, step_cfg, path: Path) -> dict:
    """Run one step's method in `path` as a finished run (results.json), so the next step can take it as its
    base_run; returns the stage info: the step's metrics, parameters and artefact size."""
    sub = sub_context(ctx, path, step_cfg)
    rd = RunDir(path)
    rd.start({"method": dataclasses.asdict(step_cfg), "model": dataclasses.asdict(ctx.model_cfg),
              "task": dataclasses.asdict(ctx.task_cfg), "train": dataclasses.asdict(ctx.train), "seed": ctx.seed},
             overrides=[])
    result = registry.get(step_cfg.name)(sub)
    metrics = result.pop("metrics", {})
    rd.finish("completed", metrics=metrics, **{k: v for k, v in {**result, **sub.info}.items() if k not in RESERVED})
    model_dir = path / "model"
    quantized = result.get("size_mb", {}).get("int8") if step_cfg.name == "quantize" else None
    parameters = sub.info.get("parameters") or count_parameters(deploy.load_deployed(ctx, model_dir))
    return {"metrics": metrics, "parameters": parameters["total"] if isinstance(parameters, dict) else parameters,
            "size_mb": quantized if quantized is not None else artifacts.size_mb(model_dir)}


def speed_table(ctx, dense_model, rows: list[dict]) -> dict:
    """The dense model and every step's deployed model, timed side by side on the same batches."""
    models = {"dense": dense_model}
    for row in rows:
        models[row["chain"]] = deploy.load_deployed(ctx, Path(row["path"]) / "model")
    return speed.record(ctx, models, reference="dense", repeats=ctx.method.speed_repeats)


def relative(value, reference) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def print_table(ctx, out: dict) -> None:
    main = ctx.task.main_metric
    print(f"compress {ctx.task.name}: dense {main} {out['dense'].get(main):.4f}, "
          f"{out['dense']['parameters']:,} parameters, {out['dense']['size_mb']} MB")
    print(f"{'chain':<34} {main:>9} {'% dense':>8} {'1x64':>6} {'32x128':>7} {'params':>11} {'MB':>7}")
    for row in out["steps"]:
        print(f"{row['chain']:<34} {row['metric']:>9.4f} {100 * row['relative']:>7.1f}% "
              f"{row.get('speedup_1x64', float('nan')):>5.2f}x {row.get('speedup_32x128', float('nan')):>6.2f}x "
              f"{row['parameters']:>11,} {row['size_mb']:>7.2f}")
