"""Sweeps that resume and report: what every runner launcher does around its launch, and the summary.

Every job of a `-m` sweep has a deterministic run directory (conf/config.yaml: hydra.sweep.dir/subdir).
Before launching, each job's config is loaded with Hydra's own `load_sweep_config` (what the job itself
will see), so its directory is exact. A job whose results.json is completed (same config fingerprint,
force=false) is skipped: not run, not submitted; its stored main metric goes back to the sweeper, so an
Optuna study re-launched with the same sampler seed replays its finished trials and carries on.

After the launch each job's outcome is read from its results.json. A failed job (an exception, a
UserError, a SLURM job that died) is recorded and never stops the sweep: it goes back to the sweeper as
None (Optuna marks that trial failed). `SweepSummary` (hydra.callbacks.summary) prints completed / skipped
/ failed at the end, each failure with its one-line error and run directory, and exits 1 if any failed.

    SequentialLauncher    hydra/launcher=sequential (hardware=cpu|gpu|multi_gpu): one job after another here
    hydra_plugins/plm_runner/launchers.py: the launcher classes Hydra instantiates (sequential, local, slurm)
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from runner.results import RESULTS, RunDir, fingerprint
from runner.tasks import digest

log = logging.getLogger("runner")


@dataclass
class Job:
    """One job of a sweep: its overrides, run directory and, once known, what became of it."""

    idx: int
    overrides: list[str]
    config: DictConfig  # the job's full config, hydra node included
    run_dir: Path
    outcome: str = "pending"  # completed | skipped | failed
    error: str | None = None
    value: float | None = None  # the task's main metric (what the sweeper optimises)

    @property
    def label(self) -> str:
        return " ".join(filter_overrides(self.overrides)) or "(no overrides)"


# The jobs of the sweep now running in this process, in launch order (filled by the launchers,
# read by SweepSummary at the end; cleared at the start of every multirun).
JOBS: list[Job] = []


def _task_config(config: DictConfig) -> DictConfig:
    task_cfg = copy.deepcopy(config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg


def _main_metric(config: DictConfig, metrics: dict) -> float | None:
    value = metrics.get(OmegaConf.select(config, "task.main_metric", default=None))
    return float(value) if isinstance(value, int | float) else None


def plan(launcher: Launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Job]:
    """Each job's config and run directory as the job will compute them; completed ones are marked skipped."""
    hydra_cfg = HydraConfig.instance()
    jobs = []
    for idx, overrides in enumerate(job_overrides, initial_job_idx):
        config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx  # as Hydra's basic launcher; submitit jobs set their SLURM id
            config.hydra.job.num = idx
        saved = hydra_cfg.cfg
        hydra_cfg.set_config(config)  # as in hydra.core.utils.run_job: ${hydra:...} resolves against this job
        try:
            run_dir = Path(os.path.abspath(os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))))
            task_cfg = _task_config(config)
            plain = OmegaConf.to_container(task_cfg, resolve=True)
        except Exception as e:  # launch it anyway: the job fails on the same error and reports it
            log.warning("job #%d: its config does not resolve (%s: %s)", idx, type(e).__name__, e)
            run_dir, task_cfg, plain = Path(os.path.abspath(str(config.hydra.sweep.dir))), None, {}
        finally:
            hydra_cfg.cfg = saved
        job = Job(idx, list(overrides), config, run_dir)
        rd = RunDir(run_dir)
        if (plain and rd.status == "completed" and not plain.get("force")
                and rd.results.get("fingerprint") in (None, fingerprint(plain))
                and not digest.differs(rd.results.get("data"), digest.for_config(plain))):  # other data: the job refuses
            job.outcome = "skipped"
            job.value = _main_metric(task_cfg, rd.results.get("metrics") or {})
            print(f"skipped: already completed; results in {run_dir / RESULTS}")
        jobs.append(job)
    return jobs


def settle(job: Job, ret: JobReturn | BaseException | None) -> None:
    """Read the job's outcome from its results.json (and what the launcher got back)."""
    rd = RunDir(job.run_dir)
    exc = ret if isinstance(ret, BaseException) else None
    if isinstance(ret, JobReturn) and ret.status == JobStatus.FAILED:
        exc = ret._return_value
    if rd.status == "completed" and exc is None:
        job.outcome = "completed"
        job.value = _main_metric(job.config, rd.results.get("metrics") or {})
        return
    job.outcome = "failed"
    if exc is not None:  # the task's exception, or the launcher's report of a job that died
        job.error = f"{type(exc).__name__}: {exc}"
    elif rd.status == "failed" and rd.results.get("error"):  # a UserError, recorded by runner/run.py
        job.error = str(rd.results["error"])
    else:
        job.error = f"the job ended with no completed results.json (status: {rd.status or 'none'})"
    job.error = (job.error.strip().splitlines() or ["?"])[0][:300]
    log.error("job #%d failed: %s", job.idx, job.error)


def job_return(job: Job, ret: JobReturn | BaseException | None) -> JobReturn:
    """What the sweeper gets: COMPLETED with the main metric, or None for a failed job (never a raise)."""
    if not isinstance(ret, JobReturn):
        ret = JobReturn(overrides=job.overrides, cfg=_task_config(job.config), hydra_cfg=job.config,
                        working_dir=os.getcwd(), task_name=str(job.config.hydra.job.name))
    ret.status = JobStatus.COMPLETED
    ret.return_value = job.value if job.outcome in ("completed", "skipped") else None
    return ret


def launch_resuming(launcher: Launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
                    run_jobs: Callable[[list[Job]], list[JobReturn | BaseException]]) -> list[JobReturn]:
    """plan -> run_jobs(the jobs not skipped) -> settle each; returns one JobReturn per job, in order."""
    jobs = plan(launcher, job_overrides, initial_job_idx)
    todo = [j for j in jobs if j.outcome != "skipped"]
    rets: dict[int, Any] = {}
    if todo:
        for job, ret in zip(todo, run_jobs(todo), strict=True):
            settle(job, ret)
            rets[job.idx] = ret
    else:
        log.info("nothing to launch: all %d jobs are already completed", len(jobs))
    JOBS.extend(jobs)
    return [job_return(j, rets.get(j.idx)) for j in jobs]


class SequentialLauncher(Launcher):
    """Hydra's basic launcher (jobs one after another in this process) with sweep resume and failures
    recorded instead of raised (hydra/launcher=sequential)."""

    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.task_function = None
        self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        return launch_resuming(self, job_overrides, initial_job_idx, self._run)

    def _run(self, jobs: list[Job]) -> list[JobReturn]:
        log.info("Launching %d jobs locally, one after another", len(jobs))
        rets = []
        for job in jobs:
            log.info("\t#%d : %s", job.idx, job.label)
            rets.append(run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                config=job.config, job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return rets


def swept(jobs: list[Job]) -> Callable[[Job], str]:
    """A short label for each job: only the overrides whose value differs between the sweep's jobs."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for o in filter_overrides(job.overrides):
            key, _, value = o.partition("=")
            values.setdefault(key, set()).add(value)
    varying = {k for k, v in values.items() if len(v) > 1 or sum(k == o.partition("=")[0] for j in jobs
                                                                  for o in j.overrides) < len(jobs)}
    return lambda job: " ".join(o for o in filter_overrides(job.overrides) if o.partition("=")[0] in varying) \
        or job.label


def summary(jobs: list[Job]) -> str:
    count = {k: sum(j.outcome == k for j in jobs) for k in ("completed", "skipped", "failed")}
    lines = [f"sweep summary: {count['completed']} completed, {count['skipped']} skipped (already completed), "
             f"{count['failed']} failed, of {len(jobs)} jobs"]
    label = swept(jobs)
    for job in jobs:
        if job.outcome == "failed":
            lines += [f"  failed: {label(job)}", f"    error: {job.error}", f"    run directory: {job.run_dir}"]
    return "\n".join(lines)


class SweepSummary(Callback):
    """hydra.callbacks.summary: at the end of every multirun, print what became of each job."""

    def __init__(self, exit_on_failure: bool = True) -> None:
        self.exit_on_failure = exit_on_failure

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        JOBS.clear()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not JOBS:
            print(f"sweep summary: none (launcher {config.hydra.launcher.get('_target_')} does not report jobs; "
                  "use hydra/launcher=sequential, local or slurm)")
            return
        print(summary(JOBS), flush=True)
        if self.exit_on_failure and any(j.outcome == "failed" for j in JOBS):
            sys.stdout.flush()
            raise SystemExit(1)
