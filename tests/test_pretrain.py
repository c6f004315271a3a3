"""method=pretrain end to end on tiny models: the curve, the saved MLM head, refusals."""

from __future__ import annotations

import csv
import json

from tests.conftest import checkpoint_reached, kill_when, run_cli

# A tiny-bert MLM run of a few dozen steps on WikiText-2 (a few seconds of CPU).
TINY_MLM = [
    "model=tiny-bert", "task=pretrain/wikitext", "task.max_train_samples=300", "task.max_eval_samples=40",
    "task.max_length=32", "train.max_steps=40", "train.batch_size=16", "train.eval_batch_size=64",
    "train.eval_every=steps", "train.eval_steps=10", "train.logging_steps=5", "train.save_steps=20", "train.lr=1e-3",
]


def results(root) -> tuple[dict, object]:
    files = list(root.rglob("results.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text()), files[0].parent


def test_tiny_pretrain_lowers_validation_perplexity_and_saves_the_mlm_head(tmp_path, shared_data):
    out = run_cli("method=pretrain", *TINY_MLM, f"data_dir={shared_data}", f"paths.output_root={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    r, run_dir = results(tmp_path)
    assert r["status"] == "completed"
    with (run_dir / "curve.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [10, 20, 30, 40]
    first, last = float(rows[0]["eval_perplexity"]), float(rows[-1]["eval_perplexity"])
    assert last < 0.8 * first, (first, last)
    assert r["metrics"]["perplexity"] == float(rows[-1]["eval_perplexity"]) or \
        abs(r["metrics"]["perplexity"] - last) < 1e-6 * last
    assert (run_dir / "curve.png").stat().st_size > 1000

    from transformers import AutoModelForMaskedLM

    model, info = AutoModelForMaskedLM.from_pretrained(str(run_dir / "model"), output_loading_info=True)
    assert not info["missing_keys"], info  # the MLM head was saved with the model
    assert (run_dir / "model" / "tokenizer.json").exists() or (run_dir / "model" / "vocab.txt").exists()


def test_continued_pretraining_starts_from_the_base_run(tmp_path, shared_data):
    base = run_cli("method=pretrain", *TINY_MLM, f"data_dir={shared_data}", f"paths.output_root={tmp_path / 'a'}")
    assert base.returncode == 0, base.stderr[-3000:]
    _, base_dir = results(tmp_path / "a")
    args = [a for a in TINY_MLM if not a.startswith("train.max_steps")]
    out = run_cli("method=pretrain", *args, "train.max_steps=10", f"method.base_run='{base_dir}'",
                  f"data_dir={shared_data}", f"paths.output_root={tmp_path / 'b'}")
    assert out.returncode == 0, out.stderr[-3000:]
    r, _ = results(tmp_path / "b")
    base_r, _ = results(tmp_path / "a")
    # ten more steps from the base's weights end near the base's loss, far below a fresh model's first point
    assert r["metrics"]["loss"] < base_r["metrics"]["loss"] + 0.3


def test_t5_and_classification_tasks_are_refused_in_one_line(tmp_path, shared_data):
    args = [a for a in TINY_MLM if not a.startswith("model=")]
    out = run_cli("method=pretrain", *args, "model=tiny-t5", f"data_dir={shared_data}",
                  f"paths.output_root={tmp_path}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: method=pretrain: model tiny-t5 is a T5")
    out = run_cli("method=pretrain", "model=tiny-bert", "task=glue/sst2", f"data_dir={shared_data}",
                  f"paths.output_root={tmp_path}")
    assert out.returncode == 2
    assert "task=pretrain/wikitext" in out.stderr.strip().splitlines()[-1]


def test_killed_pretrain_run_resumes_to_the_same_loss(tmp_path, shared_data):
    """SIGKILL after the checkpoint at step 20, re-run: the same final validation loss and curve as a run
    never interrupted. The training masks come from (seed, the batch's tokens), not the global RNG that
    the Trainer moves while it skips the consumed batches (runner.tasks.collators.MaskingCollator)."""
    common = ["method=pretrain", *TINY_MLM, "train.save_steps=10", f"data_dir={shared_data}"]
    whole = run_cli(*common, f"paths.output_root={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    expected, whole_dir = results(tmp_path / "whole")

    root = tmp_path / "killed"
    kill_when([*common, f"paths.output_root={root}"], checkpoint_reached(root, 20), "its checkpoint at step 20")
    partial, _ = results(root)
    assert partial["status"] == "running"

    resumed = run_cli(*common, f"paths.output_root={root}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    got, run_dir = results(root)
    assert got["status"] == "completed" and got["attempts"] == 2
    assert abs(got["metrics"]["loss"] - expected["metrics"]["loss"]) < 1e-6
    with (run_dir / "curve.csv").open() as a, (whole_dir / "curve.csv").open() as b:
        resumed_curve, whole_curve = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [int(r["step"]) for r in resumed_curve] == [10, 20, 30, 40]
    for mine, theirs in zip(resumed_curve, whole_curve, strict=True):
        assert abs(float(mine["eval_loss"]) - float(theirs["eval_loss"])) < 1e-6, (mine, theirs)
