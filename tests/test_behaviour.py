"""Behaviour on real data with the real MiniLM (slow: minutes on 2 cores; `make test-full`)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_embedded_default_bbc_news_reaches_090(tmp_path):
    out = run_cli(f"paths.output_root={tmp_path}", timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(next(tmp_path.rglob("results.json")).read_text())
    assert r["config"]["model"]["name"] == "minilm" and r["config"]["task"]["name"] == "news/bbc"
    assert r["metrics"]["accuracy"] >= 0.90


def test_sst2_8000_sentences_one_epoch_reaches_085(tmp_path, shared_data):
    out = run_cli("task=glue/sst2", f"data_dir={shared_data}", "task.max_train_samples=8000", "train.epochs=1",
                  "train.batch_size=32", "task.max_length=64", "train.lr=5e-5", f"paths.output_root={tmp_path}",
                  timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(next(tmp_path.rglob("results.json")).read_text())
    assert r["metrics"]["accuracy"] >= 0.85


def test_k_shot_sst2_reports_dev_and_test(tmp_path, shared_data):
    out = run_cli("task=glue/sst2", f"data_dir={shared_data}", "task.k_shot=16", "task.max_length=64",
                  "train.epochs=5", "train.batch_size=8", "train.lr=2e-5", f"paths.output_root={tmp_path}",
                  timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(next(tmp_path.rglob("results.json")).read_text())
    assert set(r["test"]) >= {"accuracy"} and r["test"]["accuracy"] > 0.5
