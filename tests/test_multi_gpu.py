"""hardware=multi_gpu re-launches the job under torchrun (DDP). Without GPUs the same path runs on CPU
processes (gloo), which proves the launch, the shared run directory and rank-0-only results."""

from __future__ import annotations

import json

from tests.conftest import TINY_SST2, run_cli


def test_multi_gpu_runs_under_torchrun_with_two_processes(tmp_path, shared_data):
    out = run_cli(*TINY_SST2, "task.max_train_samples=64", "hardware=multi_gpu", "hardware.device=cpu",
                  "hardware.num_gpus=2", f"data_dir={shared_data}", f"paths.output_root={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[rank0]" in out.stderr or "[rank1]" in out.stderr or out.stdout.count("run directory:") == 1
    files = list(tmp_path.rglob("results.json"))
    assert len(files) == 1
    r = json.loads(files[0].read_text())
    assert r["status"] == "completed" and r["attempts"] == 1
    assert out.stdout.count("final metrics:") == 1  # only rank 0 reports
