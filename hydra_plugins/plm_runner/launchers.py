"""plm-runner's launchers: sweep resume and failure reports on every one, requeue on submitit's.

    hydra/launcher=sequential (hardware=cpu|gpu|multi_gpu)  jobs one after another in this process
    hydra/launcher=slurm      (hardware=slurm)       one SLURM job array per sweep (conf/hydra/launcher/slurm.yaml)
    hydra/launcher=local      (hardware=local_jobs)  each job a process on this machine (.../local.yaml)

The logic lives in runner/sweep.py and runner/requeue.py; Hydra only instantiates launcher classes
defined under `hydra_plugins`, hence this module. It is imported at every start-up (plugin discovery):
no torch, no submitit at import time.

What the submitit ones add to hydra_submitit_launcher 1.2.0's launchers:
- launch(): jobs whose results.json is completed are not submitted (runner/sweep.py), and a job that
  died (OOM-killed, node failure) is reported as failed instead of stopping the wait for the others;
  on a cluster without accounting (no sacct) submitit cannot see such a death and would wait forever, so
  the wait also asks squeue, and a job gone from the queue without a result fails after a grace period;
- __call__() (runs in the job): SLURM's pre-timeout / preemption signal saves a checkpoint at the next
  step and then requeues the job (runner/requeue.py); `checkpoint()` is the plugin's: the same overrides,
  hence the same run directory, where the requeued job resumes from its newest checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

from runner import requeue, sweep

try:  # the `slurm` extra (hydra-submitit-launcher); without it only the sequential launcher exists
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as plugin
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
except ImportError:  # pragma: no cover
    plugin = None

log = logging.getLogger("runner")

QUEUE_CHECK_S = 30.0  # how often the wait asks squeue whether a job is still queued or running
RESULT_GRACE_S = 60.0  # how long a job may be gone from the queue before its missing result counts as a death


# squeue's states of a job that has ended. Every other state (pending, running, completing, requeued,
# held for a requeue, suspended, ...) means SLURM still holds the job. squeue lists only pending, running
# and completing jobs unless asked for all: a job held in REQUEUE_HOLD or SPECIAL_EXIT would look gone.
FINISHED_STATES = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                             "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT"})


def slurm_state(job_id: str) -> str | None:
    """The job's state as squeue reports it in any state ("RUNNING", "PENDING", "COMPLETED", ...), "" when
    the controller no longer knows the job (purged after MinJobAge), None when squeue cannot tell (not
    installed, controller unreachable)."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode == 0:
        return (out.stdout.split() or [""])[0]
    return "" if "invalid job id" in out.stderr.lower() else None


def wait_for_result(job, state=slurm_state, check_s: float = QUEUE_CHECK_S, grace_s: float = RESULT_GRACE_S,
                    poll_s: float = 1.0) -> None:
    """submitit's job.wait(), plus the one death it cannot see without sacct: the job has ended (or left
    the controller) and no result file appears within `grace_s` (killed outside Python, node lost).
    Raises RuntimeError naming the state squeue last reported."""
    gone_since, last = None, None
    last_check = -float("inf")
    while not job.done():
        now = time.monotonic()
        if now - last_check >= check_s:
            last_check = now
            last = state(str(job.job_id))
            ended = last is not None and (last == "" or last in FINISHED_STATES)
            gone_since = (gone_since or now) if ended else None
        if gone_since is not None and now - gone_since >= grace_s:
            raise RuntimeError(f"the job left the SLURM queue ({last or 'no longer known'}) without writing a "
                               f"result in {grace_s:.0f} s (killed outside Python?)")
        time.sleep(poll_s)


class _Resumable:
    """Mixin over the plugin's BaseSubmititLauncher."""

    _EXECUTOR: str
    params: dict[str, Any]

    def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state) -> JobReturn:
        # In the job. Give the training loop most of the warning time to reach a step end and save.
        grace = 0.75 * float(self.params.get("signal_delay_s") or 30)
        with requeue.SignalGuard(grace_s=grace) as guard:
            try:
                return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
            except requeue.Requeue as e:
                log.warning("requeueing: %s", e)
                guard.requeue()  # submitit: checkpoint() + requeue + exit; returns only if it cannot requeue
                raise

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return sweep.launch_resuming(self, job_overrides, initial_job_idx, self._submit)

    def _submit(self, jobs: list[sweep.Job]) -> list[JobReturn | BaseException]:
        """The plugin's launch(), but a job that raises or dies is returned as its exception."""
        import submitit

        params = dict(self.params)
        init = {"folder": params.pop("submitit_folder")}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in params.items()})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        args = [(job.overrides, "hydra.sweep.dir", job.idx, f"job_id_for_{job.idx}", Singleton.get_state())
                for job in jobs]
        submitted = executor.map_array(self, *zip(*args, strict=True))
        for job, sub in zip(jobs, submitted, strict=True):
            log.info("\t#%d %s job %s: %s -> %s", job.idx, self._EXECUTOR, sub.job_id, job.label,
                     job.run_dir)
        results: list[JobReturn | BaseException] = []
        for sub in submitted:
            try:
                if self._EXECUTOR == "slurm":
                    wait_for_result(sub)
                results.append(sub.results()[0])
            except Exception as e:  # the job died or raised outside the task: report it, wait for the others
                last = [line for line in str(e).splitlines() if line.strip()][-1:] or [type(e).__name__]
                results.append(RuntimeError(f"{self._EXECUTOR} job {sub.job_id}: {last[0].strip()} "
                                            f"(log: {sub.paths.stderr})"))
        return results


class SequentialLauncher(sweep.SequentialLauncher):
    """hydra/launcher=sequential."""


if plugin is not None:

    class SlurmLauncher(_Resumable, plugin.SlurmLauncher):
        """hydra/launcher=slurm."""

    class LocalLauncher(_Resumable, plugin.LocalLauncher):
        """hydra/launcher=local."""
