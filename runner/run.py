"""One run: check the config, honour the run directory contract, dispatch to the method.

    completed results.json -> skip (unless force=true)      no torch import on this path
    checks every config group against its dataclass
    seed, hardware, logger -> method.run(ctx) -> results.json completed | failed
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from omegaconf import DictConfig

from runner import preflight, registry
from runner.config import build, to_dict, unknown_key_message
from runner.errors import UserError
from runner.requeue import Requeue
from runner.results import RESERVED, RunDir, diff_keys, fingerprint
from runner.tasks import digest

log = logging.getLogger("runner")


def _hydra_runtime() -> tuple[Path, list[str], bool]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    return Path(hc.runtime.output_dir), list(hc.overrides.task), hc.mode == RunMode.MULTIRUN


def make_context(cfg: DictConfig, run_dir: Path):
    """Check every group against its dataclass and build the method's Context."""
    from runner.context import Context
    from runner.hardware import HardwareConfig
    from runner.logger import LoggerConfig
    from runner.models import ModelConfig
    from runner.tasks.config import TaskConfig
    from runner.train import TrainConfig

    c = to_dict(cfg)
    preflight.top_level(c)
    known = {"model", "teacher", "method", "task", "train", "hardware", "logger", "paths", "seed", "data_dir",
             "force", "experiment"}
    unknown = sorted(set(c) - known)
    if unknown:
        raise UserError(unknown_key_message("", unknown, sorted(known)))
    return Context(
        run_dir=run_dir,
        seed=c["seed"],
        data_dir=c.get("data_dir"),
        cache_dir=c["paths"].get("cache_dir"),
        method=build(registry.config_class(c["method"]["name"]), c["method"], "method"),
        model_cfg=build(ModelConfig, c["model"], "model"),
        teacher_cfg=build(ModelConfig, c["teacher"], "teacher") if c.get("teacher") else None,
        task_cfg=build(TaskConfig, c["task"], "task"),
        train=build(TrainConfig, c["train"], "train"),
        hardware=build(HardwareConfig, c["hardware"], "hardware"),
        logger=build(LoggerConfig, c["logger"], "logger"),
    )


def check_existing(rd: RunDir, config: dict, force: bool, data: dict | None = None) -> bool:
    """True when the run is already completed and must be skipped. Refuses to mix configs (or data) in one dir."""
    if rd.status is None:
        return False
    old = rd.results.get("config") or {}
    other_data = digest.differs(rd.results.get("data"), data)
    if (rd.results.get("fingerprint") not in (None, fingerprint(config)) or other_data) and not force:
        keys = [k for k in diff_keys(old, config) if k.split(".")[0] not in
                ("hardware", "logger", "paths", "force", "data_dir")] + ["data"] * other_data
        raise UserError(f"{rd.path} holds a run of a different config (differs in: {', '.join(keys[:6]) or '?'}); "
                        "pass force=true to redo it there (the old results are kept aside)")
    if force:
        moved = rd.archive()
        if moved:
            log.info("force=true: kept the previous results as %s", ", ".join(p.name for p in moved))
        return False
    return rd.status == "completed"


def run(cfg: DictConfig) -> float | None:
    """Entry point called by runner/__main__.py. Returns the main metric (for sweepers) or None."""
    run_dir, overrides, multirun = _hydra_runtime()
    config = to_dict(cfg)
    rd = RunDir(run_dir)
    try:
        preflight.top_level(config)
        data = digest.for_config(config)  # the content of the task's files: part of the run's identity
        if check_existing(rd, config, bool(cfg.force), data):
            metrics = rd.results.get("metrics", {})
            print(f"skipped: already completed; results in {run_dir / 'results.json'}")
            return _main_metric(cfg, metrics)
        ctx = make_context(cfg, run_dir)
        preflight.before_start(ctx)  # data loads, model-config checks: before the run directory is taken
    except UserError as e:
        preflight.discard(run_dir, config.get("paths", {}).get("output_root"))
        _fail(None, e, multirun)
        raise  # multirun: no results.json records it; the sweep summary reads it from the job's exception

    from runner import hardware

    if ctx.hardware.name == "multi_gpu" and not hardware.in_distributed_child():
        code = hardware.relaunch_under_torchrun(ctx.hardware, overrides)
        if code != 0:
            return _fail(rd, UserError(f"torchrun exited with status {code}; see {run_dir}/run.log"), multirun)
        return _main_metric(cfg, RunDir(run_dir).results.get("metrics", {}))

    main = hardware.is_main_process()
    if main:
        rd.start(config, overrides, data=data)
    try:
        hardware.apply(ctx.hardware)
        from runner import logger as tracking

        tracking.setup(ctx.logger, run_dir)
        from transformers import set_seed

        set_seed(ctx.seed)
        result = registry.get(ctx.method.name)(ctx)
        metrics, extra = check_result(result, ctx.info)
    except UserError as e:
        return _fail(rd if main else None, e, multirun)
    except BaseException as e:
        if main:  # Requeue: a checkpoint was saved on SLURM's signal and the launcher requeues this job
            status = "requeued" if isinstance(e, Requeue) else "failed"
            rd.finish(status, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        raise
    if not main:
        return None
    rd.finish("completed", metrics=metrics, **extra)
    demo = not any(o.lstrip("+~").split("=")[0] in ("method", "task", "model") for o in overrides)
    _report(run_dir, metrics, first_run=demo)
    return _main_metric(cfg, metrics)


def check_result(result, info: dict) -> tuple[dict, dict]:
    """(metrics, the other results.json fields) of a method's return value and ctx.info, or a one-line
    error when the method returned something that is not a dict or a key the run directory owns."""
    if not isinstance(result, dict):
        raise UserError(f"the method returned {type(result).__name__}, not a dict of results")
    result = dict(result)
    metrics = result.pop("metrics", {})
    clash = sorted((set(result) | set(info)) & set(RESERVED))
    both = sorted(set(result) & set(info))
    if clash or both:
        raise UserError(f"the method's results use reserved or duplicate key(s) {', '.join(clash + both)}; "
                        f"results.json sets {', '.join(RESERVED)} itself and ctx.info its own keys: rename them")
    return metrics, {**result, **info}


def _fail(rd: RunDir | None, error: UserError, multirun: bool) -> None:
    """One line on stderr; a non-zero exit for single runs; multirun jobs record it and let the sweep go on."""
    if rd is not None and rd.status == "running":
        rd.finish("failed", error=str(error))
    print(f"error: {error}", file=sys.stderr)
    if not multirun:
        sys.exit(2)
    return None


# What `make demo` suggests next. All of SST-2 (67k sentences, 2 epochs) takes hours on a CPU, so without a GPU
# the commands take the recipes' subset; the times are those of the README's "First steps" (2-core machine).
NEXT = """next (on this CPU: 8,000 of SST-2's 67k sentences, the recipes' subset; all 67k take hours here):
  # fine-tune MiniLM on SST-2: ~10 min
  python -m runner task=glue/sst2 data_dir=../shared/data task.max_train_samples=8000
  # fine-tune, then MoEfy (experts, routers, accuracy and speed at 6 shares of experts): ~15 min
  python -m runner method=moefication task=glue/sst2 data_dir=../shared/data task.max_train_samples=8000
  python -m runner --help    # every group and option; README.md for more"""
NEXT_GPU = """next:
  python -m runner task=glue/sst2 data_dir=../shared/data hardware=gpu                      # fine-tune on a GLUE task
  python -m runner method=moefication task=glue/sst2 data_dir=../shared/data hardware=gpu   # fine-tune + MoEfy
  python -m runner --help                                          # every group and option; README.md for more"""


def _report(run_dir: Path, metrics: dict, first_run: bool = False) -> None:
    shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                      if isinstance(v, float) and k not in ("epoch", "step"))
    print(f"run directory: {run_dir}")
    print(f"results: {run_dir / 'results.json'}")
    print(f"final metrics: {shown}")
    if first_run:  # the embedded default method, task and model (`make demo`): say what to try next
        import torch  # loaded by the run already

        print(NEXT_GPU if torch.cuda.is_available() else NEXT)


def _main_metric(cfg: DictConfig, metrics: dict) -> float | None:
    value = metrics.get(cfg.task.main_metric) if "main_metric" in cfg.task else None
    return float(value) if isinstance(value, int | float) else None
