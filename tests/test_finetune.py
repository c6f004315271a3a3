"""Fine-tuning end to end on tiny models: results.json contract, families, freezing, failures."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY_SST2, run_cli


def results(root) -> dict:
    files = list(root.rglob("results.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_tiny_bert_sst2_writes_the_results_contract(tmp_path, shared_data):
    out = run_cli(*TINY_SST2, f"data_dir={shared_data}", f"paths.output_root={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert "final metrics: " in out.stdout and "accuracy=" in out.stdout
    r = results(tmp_path)
    assert r["status"] == "completed"
    assert 0.0 <= r["metrics"]["accuracy"] <= 1.0
    assert r["best"]["accuracy"] >= r["metrics"]["accuracy"]
    assert r["config"]["model"]["name"] == "tiny-bert" and r["config"]["task"]["name"] == "glue/sst2"
    assert r["parameters"]["trainable"] == r["parameters"]["total"] > 0
    mem = r["memory"]  # peak memory of training: what it added on top of the process at its start
    assert mem["what"] == "cpu resident set" and mem["peak_mb"] >= mem["start_mb"] > 0 and mem["increase_mb"] >= 0
    assert r["versions"]["transformers"].startswith("5.") and "git_commit" in r and r["wall_time_s"] > 0
    run_dir = tmp_path / "finetune" / "glue" / "sst2" / "tiny-bert"
    assert (next(run_dir.rglob("model")) / "config.json").exists()
    assert next(run_dir.rglob("seed42")).name == "seed42"


@pytest.mark.parametrize("model", ["tiny-roberta", "tiny-electra", "tiny-t5"])
def test_every_tiny_family_fine_tunes(model, tmp_path, shared_data):
    args = [a for a in TINY_SST2 if not a.startswith("model=")]
    out = run_cli(*args, f"model={model}", "task.max_train_samples=64", f"data_dir={shared_data}",
                  f"paths.output_root={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert results(tmp_path)["status"] == "completed"


def test_regression_task_stsb(tmp_path, shared_data):
    out = run_cli("model=tiny-bert", "task=glue/stsb", "task.max_train_samples=64", "task.max_eval_samples=64",
                  "task.max_length=32", "train.epochs=1", f"data_dir={shared_data}", f"paths.output_root={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    m = results(tmp_path)["metrics"]
    assert {"pearson", "spearmanr"} <= set(m)


def test_freeze_by_pattern_trains_only_matching_parameters(tmp_path, shared_data):
    out = run_cli(*TINY_SST2, "task.max_train_samples=32", "method.trainable=[bias,classifier]",
                  f"data_dir={shared_data}", f"paths.output_root={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    p = results(tmp_path)["parameters"]
    assert 0 < p["trainable"] < p["total"] / 10


def test_a_failed_run_is_never_marked_completed(tmp_path, shared_data):
    out = run_cli(*TINY_SST2, "train.scheduler=no_such_schedule", f"data_dir={shared_data}",
                  f"paths.output_root={tmp_path}")
    assert out.returncode != 0
    r = results(tmp_path)
    assert r["status"] == "failed" and "no_such_schedule" in r["error"]


def test_wandb_logger_runs_offline_into_the_run_directory(tmp_path, shared_data):
    out = run_cli(*TINY_SST2, "task.max_train_samples=32", "logger=wandb", f"data_dir={shared_data}",
                  f"paths.output_root={tmp_path}", env={"WANDB_MODE": "offline", "WANDB_API_KEY": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = next(tmp_path.rglob("results.json")).parent
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb wrote no offline run"
