"""Sweeps: a multirun resumes (completed jobs are not launched again), a failed job never stops the
others, and every multirun ends with a summary that names each failure with its error and run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import compose, run_cli

# Tiny-bert on 64 SST-2 rows: 4 steps, a few seconds per job.
TINY = [
    "model=tiny-bert", "task=glue/sst2", "task.max_train_samples=64", "task.max_eval_samples=32",
    "task.max_length=32", "train.epochs=1", "train.batch_size=16", "train.eval_batch_size=32",
    "train.logging_steps=2", "train.save_steps=2", "train.lr=1e-3",
]


def results(root: Path) -> dict[str, dict]:
    """seed<N> -> results.json of every run under root."""
    return {p.parent.name: json.loads(p.read_text()) for p in root.rglob("results.json")}


def submitted(root: Path) -> set[str]:
    folder = root / ".submitit"
    return {p.name for p in folder.iterdir() if "%" not in p.name} if folder.exists() else set()


def test_local_jobs_sweep_resumes_and_reports_failures(tmp_path, shared_data):
    common = [*TINY, f"data_dir={shared_data}", f"paths.output_root={tmp_path}"]
    local = ["hardware=local_jobs", "hardware.threads=1"]  # submitit's local executor: one process per job

    first = run_cli("-m", *common, *local, "seed=1,2,3")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "sweep summary: 3 completed, 0 skipped (already completed), 0 failed, of 3 jobs" in first.stdout
    runs = results(tmp_path)
    assert sorted(runs) == ["seed1", "seed2", "seed3"]
    assert all(r["status"] == "completed" and r["attempts"] == 1 for r in runs.values())
    jobs = submitted(tmp_path)
    assert len(jobs) == 3

    # The same sweep again: nothing is submitted; each job is skipped before launch.
    again = run_cli("-m", *common, *local, "seed=1,2,3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped: already completed") == 3
    assert "sweep summary: 0 completed, 3 skipped (already completed), 0 failed, of 3 jobs" in again.stdout
    assert submitted(tmp_path) == jobs
    assert results(tmp_path) == runs

    # The default launcher (one job after another here): a bad job first; the next one still runs.
    # seed=x is refused in the job before results.json exists; the summary has its one line.
    mixed = run_cli("-m", *common, "seed=x,4,1")
    assert mixed.returncode == 1, mixed.stderr[-3000:]
    out = mixed.stdout
    assert "sweep summary: 1 completed, 1 skipped (already completed), 1 failed, of 3 jobs" in out, out[-3000:]
    failure = out[out.index("  failed: seed=x"):].splitlines()
    assert failure[1].startswith("    error: UserError: seed='x' is not an integer")
    assert failure[2].startswith("    run directory: ") and failure[2].endswith("/seedx")
    assert results(tmp_path)["seed4"]["status"] == "completed"


def test_optuna_search_survives_failed_trials(tmp_path, shared_data):
    """A failed trial reaches Optuna as FAIL (never a crash); the study finishes and reports its best."""
    fixed = [a for a in TINY if not a.startswith("train.lr=")]
    out = run_cli("-m", *fixed, f"data_dir={shared_data}", f"paths.output_root={tmp_path}",
                  "hydra/sweeper=search", "hydra.sweeper.n_trials=2",
                  "train.lr=tag(log, interval(1e-4, 1e-2))", "train.scheduler=choice(linear, bogus)")
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "sweep summary:" in out.stdout
    runs = [json.loads(p.read_text()) for p in tmp_path.rglob("results.json")]
    assert len(runs) == 2 and runs[0]["config"]["train"]["lr"] != runs[1]["config"]["train"]["lr"]
    for r in runs:  # each trial ran with the sampled values; a bogus scheduler fails, a linear one completes
        assert r["status"] == ("failed" if r["config"]["train"]["scheduler"] == "bogus" else "completed")
    completed = [r for r in runs if r["status"] == "completed"]
    assert out.returncode == (0 if len(completed) == 2 else 1)
    best = tmp_path / "optimization_results.yaml"
    assert best.exists() == bool(completed)
    if completed:
        assert f"best_value: {completed[0]['metrics']['accuracy']}" in best.read_text()


@pytest.mark.parametrize("hardware", ["slurm", "local_jobs", "cpu"])
def test_hardware_selects_the_launcher(hardware):
    target = compose([f"hardware={hardware}"], return_hydra_config=True).hydra.launcher._target_
    expected = {"slurm": "SlurmLauncher", "local_jobs": "LocalLauncher", "cpu": "SequentialLauncher"}[hardware]
    assert target == f"hydra_plugins.plm_runner.launchers.{expected}"


def test_search_recipe_maximises_the_main_metric():
    cfg = compose(["+experiment=search/sst2_lr_epochs"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.plm_runner.search.OptunaSweeper"
    assert sweeper.direction == "maximize" and set(sweeper.params) == {"train.lr", "train.epochs"}


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_local_job_saves_and_restarts_on_the_timeout_signal(tmp_path, shared_data):
    """What the SLURM test shows, without SLURM: submitit's local executor restarts a job that exits for
    requeue; the job saved a checkpoint on USR2 and resumes from it."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    args = [*TINY, "task.max_train_samples=320", "train.batch_size=8", "train.save_steps=1000",
            f"data_dir={shared_data}", f"paths.output_root={tmp_path}", "hardware=local_jobs", "hardware.threads=1",
            "seed=1,2"]
    log = tmp_path / "sweep.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "runner", "-m", *args], cwd=ROOT, stdout=f,
                                stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    task = None
    while time.time() < deadline and proc.poll() is None and task is None:
        for err in (tmp_path / ".submitit").glob("*/*_0_log.err"):
            if max(map(int, re.findall(r"(\d+)/40 \[", err.read_text(errors="replace"))), default=0) >= 2:
                task = _children(int(err.parent.name))  # the job id is the local controller's PID
                break
        time.sleep(0.2)
    assert task, "no job reached training step 2"
    os.kill(task[0], signal.SIGUSR2)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    runs = [json.loads(p.read_text()) for p in tmp_path.rglob("results.json")]
    assert [r["status"] for r in runs] == ["completed", "completed"]
    assert sorted(r["attempts"] for r in runs) == [1, 2]
    resumed = next(r for r in runs if r["attempts"] == 2)
    run_log = (Path(resumed["run_dir"]) / "run.log").read_text()
    step = re.search(r"stopped at step (\d+) on the requeue signal", run_log).group(1)
    assert f"checkpoints/checkpoint-{step}" in run_log.split("resuming from", 1)[1].splitlines()[0]


def test_signal_guard_requeues_after_the_grace_period_without_a_step_end():
    """The save-on-signal fallback: no training step ends within the grace period, so Requeue is raised
    wherever the main thread is (here: asleep), and the job resumes from its last periodic checkpoint."""
    import os
    import signal
    import time

    from runner import requeue

    before = signal.getsignal(signal.SIGUSR2)
    with pytest.raises(requeue.Requeue, match="no checkpoint saved within"):
        with requeue.SignalGuard(grace_s=0.2):
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.05)
            assert requeue.stop_requested()  # the first signal only asks the training loop to stop
            time.sleep(10)  # interrupted by the grace timer
    assert signal.getsignal(signal.SIGUSR2) == before
    requeue.clear()


def test_stop_request_saves_at_the_next_step_then_raises():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from runner import requeue
    from runner.train import StopOnRequest

    callback, state = StopOnRequest(), TrainerState(global_step=7)
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    assert not callback.on_step_end(args, state, TrainerControl()).should_save
    callback.on_save(args, state, TrainerControl())  # a periodic save: nothing happens
    requeue.request_stop()
    try:
        assert callback.on_step_end(args, state, TrainerControl()).should_save
        with pytest.raises(requeue.Requeue, match="stopped at step 7"):
            callback.on_save(args, state, TrainerControl())
    finally:
        requeue.clear()


class _FakeJob:
    """A submitted job whose result appears (done) after `done_after` polls, or never (None)."""

    job_id = "7_0"

    def __init__(self, done_after: int | None):
        self.done_after, self.polls = done_after, 0

    def done(self) -> bool:
        self.polls += 1
        return self.done_after is not None and self.polls > self.done_after


def test_wait_fails_a_job_that_left_the_queue_without_a_result():
    # Without sacct submitit sees no state: a job killed outside Python would be waited on forever.
    from hydra_plugins.plm_runner.launchers import wait_for_result

    for ended in ("COMPLETED", "FAILED", ""):  # "": the controller has purged the job
        asked = []
        said = ended or "no longer known"
        with pytest.raises(RuntimeError, match=rf"left the SLURM queue \({said}\) without writing a result"):
            wait_for_result(_FakeJob(None), lambda job_id, s=ended, a=asked: a.append(job_id) or s, check_s=0,
                            grace_s=0.05, poll_s=0.01)
        assert asked and set(asked) == {"7_0"}
    # Still held (pending, running, requeued or held for a requeue: states squeue lists only with -t all),
    # or squeue cannot tell: wait until the result is there.
    for answer in ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "SPECIAL_EXIT", None):
        job = _FakeJob(20)
        wait_for_result(job, lambda job_id, a=answer: a, check_s=0, grace_s=0.05, poll_s=0.01)
        assert job.polls == 21
    # Gone for a moment only (the grace covers a result file still being written): no failure.
    job = _FakeJob(3)
    wait_for_result(job, lambda job_id: "COMPLETED", check_s=0, grace_s=10, poll_s=0.01)
    assert job.polls == 4
