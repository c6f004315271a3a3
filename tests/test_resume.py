"""A run killed with SIGKILL mid-training resumes from its last checkpoint and ends with the same
metrics as an uninterrupted run."""

from __future__ import annotations

import json

from tests.conftest import TINY_SST2, checkpoint_reached, kill_when, run_cli

ARGS = [*TINY_SST2, "task.max_train_samples=1024", "train.epochs=2", "train.save_steps=10"]


def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path, shared_data):
    common = [*ARGS, f"data_dir={shared_data}"]
    whole = run_cli(*common, f"paths.output_root={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    expected = json.loads(next((tmp_path / "whole").rglob("results.json")).read_text())

    root = tmp_path / "killed"
    kill_when([*common, f"paths.output_root={root}"], checkpoint_reached(root, 30), "its checkpoint at step 30")
    partial = json.loads(next(root.rglob("results.json")).read_text())
    assert partial["status"] == "running"

    resumed = run_cli(*common, f"paths.output_root={root}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    got = json.loads(next(root.rglob("results.json")).read_text())
    assert got["status"] == "completed" and got["attempts"] == 2
    assert got["metrics"]["accuracy"] == expected["metrics"]["accuracy"]
    assert abs(got["metrics"]["loss"] - expected["metrics"]["loss"]) < 1e-6
