"""A finished run's model as the base or teacher of another run, and saving models so they reload.

Methods compose through run directories: MoEfication, distillation and pruning start from a fine-tuned
model, knowledge inheritance and prompt tuning from a pre-trained one. Either it is given as a finished
run (`method.base_run=` / `method.teacher_run=` <run dir>) or it is computed here as a stage that is shared
between runs through the stage cache (runner/stages.py).

    model_dir = finished_run(cfg.teacher_run, key="method.teacher_run", task=ctx.task_cfg.name)
    teacher = load_model_dir(ctx, model_dir, model_cfg=ctx.teacher_cfg)
    dense = fine_tuned(ctx, stages, "dense")            # stage: dense.path / "model"
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from runner.errors import UserError
from runner.stages import Stage, Stages


def finished_run(path: str, *, key: str, task: str | None = None) -> Path:
    """<path>/model of a completed run (on `task`, when given), or a one-line error naming the fix."""
    run_dir = Path(path).expanduser().resolve()
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, json.JSONDecodeError):
        results = finished_stage(run_dir)
    if results is None:
        raise UserError(f"{key}={path}: no readable results.json there; point it at a finished run directory "
                        "(e.g. outputs/finetune/<task>/<model>/default/seed42)") from None
    if results.get("status") != "completed":
        raise UserError(f"{key}={path}: that run is {results.get('status')}, not completed; "
                        f"finish it first (re-run its command) or drop {key}")
    trained_on = results.get("config", {}).get("task", {}).get("name")
    if task is not None and trained_on != task:
        raise UserError(f"{key}={path} was trained on task {trained_on}, not {task}")
    if not (run_dir / "model" / "config.json").exists():
        raise UserError(f"{key}={path}: no saved model in it; re-run it with method.save_model=true")
    return run_dir / "model"


def finished_stage(path: Path) -> dict | None:
    """A finished fine-tune stage (runner.stages: done.json, the task in its key) read as a completed run,
    so a stage's model can be another method's base or teacher (compress passes its dense stage)."""
    try:
        done = json.loads((path / "done.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    task = done.get("key", {}).get("task")
    if not isinstance(task, dict):
        return None
    return {"status": "completed", "config": {"task": task}}


def run_model_config(model_dir: Path):
    """The ModelConfig a finished run was made with (its results.json), or None when it has none."""
    from runner.config import build
    from runner.models import ModelConfig

    try:
        results = json.loads((Path(model_dir).parent / "results.json").read_text())
        return build(ModelConfig, results["config"]["model"], "model")
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None


def load_model_dir(ctx, model_dir: Path, *, kind: str | None = None, model_cfg=None):
    """A saved model with the task's head (`kind`: classification | mlm | base; default the task's) and
    the pooling of `model_cfg` (default the run's model), in eval mode."""
    from runner.models import load_model

    task = ctx.task
    problem = "regression" if task.is_regression else "single_label_classification"
    return load_model(model_cfg or ctx.model_cfg, kind or ctx.model_kind, num_labels=task.num_labels,
                      problem_type=problem, path=str(model_dir)).eval()


def save_model(ctx, model, path: Path, name: str = "model") -> Path:
    """Save model and tokenizer to <path>/<name>: written aside, then renamed, so a model directory that
    exists is complete (a run killed mid-save leaves only <name>.tmp, which the next save replaces)."""
    from runner import hardware

    path = Path(path)
    tmp, final = path / f"{name}.tmp", path / name
    if hardware.is_main_process():  # under torchrun every rank holds the same model: rank 0 writes it
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        ctx.tokenizer.save_pretrained(tmp)
        write_plan(model, tmp)
        if final.is_symlink():
            final.unlink()
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    hardware.wait_for_all()
    return final


def write_plan(model, model_dir: Path) -> None:
    """A structurally pruned model (heads or FFN neurons removed, also one cut to fewer layers or trained
    further) gets its pruning plan beside the weights: its config.json cannot describe its shapes, and
    runner.models loads such a directory through the plan."""
    from runner.models import arch

    try:
        plan = arch.pruning_plan(model)
    except arch.UnsupportedModelError:  # a wrapper arch does not map (a peft model): nothing was removed
        return
    if plan["heads"] or plan["ffn"]:
        plan["sizes"] = arch.layer_sizes(model)
        (Path(model_dir) / arch.PLAN_FILE).write_text(json.dumps(plan, indent=1))


def fine_tune_key(ctx, model_cfg=None, base_run: str | None = None, train=None) -> dict:
    """Everything a fine-tuned model depends on (the stage digest): model, task, training settings, seed;
    or the base run's location when the model comes from a finished run."""
    task = dataclasses.asdict(ctx.task_cfg)
    if base_run:
        return {"base_run": str(Path(base_run).resolve()), "task": task}
    return {"model": dataclasses.asdict(model_cfg or ctx.model_cfg), "task": task,
            "train": dataclasses.asdict(train or ctx.train), "seed": ctx.seed}


def fine_tuned(ctx, stages: Stages, name: str, *, model_cfg=None, base_run: str | None = None, train=None,
               check: Callable | None = None, base_key: str = "method.base_run", train_dataset=None,
               data_key: dict | None = None) -> Stage:
    """The stage `name` holding `model_cfg` (default the run's model) fine-tuned on the task with `train`
    (default the run's train config), at <stage>/model; or a link to `base_run`'s model. Shared through
    the stage cache, so every run that needs the same fine-tuned model computes it once. `check(model)`
    runs before any training (a method's one-line refusals). `train_dataset`: train on these rows instead of
    the task's training split (e.g. a seeded subset), named in the stage key by `data_key` (required with it,
    e.g. {"labelled_subset": 1000, "seed": 1}), so a model trained on other rows is never shared as this one."""
    from runner.evaluation import evaluate
    from runner.train import fit

    if (train_dataset is None) != (data_key is None):
        raise ValueError("fine_tuned: train_dataset and data_key go together (the key names the rows trained on)")

    def build(path: Path) -> dict:
        if base_run:
            source = finished_run(base_run, key=base_key, task=ctx.task_cfg.name)
            model = load_model_dir(ctx, source, model_cfg=model_cfg)
            if check is not None:
                check(model)
            link = path / "model"
            if link.is_symlink():
                link.unlink()
            link.symlink_to(source, target_is_directory=True)
            return {"base_run": str(source.parent), "metrics": evaluate(ctx, model)}
        model = ctx.new_model(model_cfg=model_cfg)
        if check is not None:
            check(model)
        result = fit(ctx, model, train_dataset, output=f"{path.name}/checkpoints", train=train)
        save_model(ctx, model, path)
        shutil.rmtree(path / "checkpoints", ignore_errors=True)
        rows = len(train_dataset if train_dataset is not None else ctx.data["train"])
        return {"metrics": evaluate(ctx, model), "train": result["train"], "train_rows": rows}

    key = fine_tune_key(ctx, model_cfg, base_run, train)
    if data_key is not None and not base_run:  # the task's whole training split keeps the key it always had
        key["train_rows"] = data_key
    return stages.run(name, key, build, share=True)


def input_batches(ctx, dataset, batch_size: int | None = None):
    """Padded model-input batches (no labels) over `dataset`, in order: for collecting activations,
    caching teacher outputs or timing."""
    from torch.utils.data import DataLoader

    from runner.tasks.collators import collator, model_inputs

    return DataLoader(model_inputs(dataset, labels=False), batch_size=batch_size or ctx.train.eval_batch_size,
                      shuffle=False, collate_fn=collator(ctx.tokenizer, mlm=False))


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt", ".data")


def size_mb(path: Path, files: list[str] | None = None) -> float:
    """Megabytes (10^6 bytes) on disk of a model: the weight files of a model directory (or the named
    `files` in it), or one file. Tokenizer and config files are not counted; links are followed."""
    path = Path(path)
    if path.is_file():
        chosen = [path]
    elif files is not None:
        chosen = [path / f for f in files]
    else:
        chosen = [p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    return round(sum(p.stat().st_size for p in chosen) / 1e6, 3)
