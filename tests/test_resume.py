"""A run killed with SIGKILL mid-training resumes from its last checkpoint and ends with the same
metrics as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import ROOT, TINY_SST2, run_cli, safe_rglob

ARGS = [*TINY_SST2, "task.max_train_samples=1024", "train.epochs=2", "train.save_steps=10"]


def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path, shared_data):
    common = [*ARGS, f"data_dir={shared_data}"]
    whole = run_cli(*common, f"paths.output_root={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    expected = json.loads(next((tmp_path / "whole").rglob("results.json")).read_text())

    root = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "runner", *common, f"paths.output_root={root}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in safe_rglob(root, "checkpoint-*") if (p / "trainer_state.json").exists()]
        if any(int(p.name.split("-")[1]) >= 30 for p in done):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = json.loads(next(root.rglob("results.json")).read_text())
    assert partial["status"] == "running"

    resumed = run_cli(*common, f"paths.output_root={root}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    got = json.loads(next(root.rglob("results.json")).read_text())
    assert got["status"] == "completed" and got["attempts"] == 2
    assert got["metrics"]["accuracy"] == expected["metrics"]["accuracy"]
    assert abs(got["metrics"]["loss"] - expected["metrics"]["loss"]) < 1e-6
