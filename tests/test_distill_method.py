"""method=distill end to end on tiny-bert: teacher stage, student training, kill/resume/skip, the teacher
frozen and absent from checkpoints, the projection only while training, and one-line config errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, TINY_SST2, compose, kill_when, run_cli, safe_rglob

ARGS = ["method=distill", *TINY_SST2, "method.student_layers=[0]"]


def student_checkpoints(root):
    return [p for p in safe_rglob(root, "checkpoint-*") if (p / "trainer_state.json").exists()
            and p.parent.name == "checkpoints" and (p.parent.parent / "results.json").exists()]


def test_kd_end_to_end_resumes_when_killed_and_skips_when_complete(tmp_path, shared_data):
    common = [*ARGS, "task.max_train_samples=1024", f"data_dir={shared_data}", f"paths.output_root={tmp_path}"]
    kill_when(common, lambda: any(int(p.name.split("-")[1]) >= 16 for p in student_checkpoints(tmp_path)),
              "the student's training could be killed")
    run_dir = next(tmp_path.rglob("results.json")).parent
    assert json.loads((run_dir / "results.json").read_text())["status"] == "running"

    resumed = run_cli(*common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "stage teacher: already done" in log and "resuming from" in log
    r = json.loads((run_dir / "results.json").read_text())
    assert r["status"] == "completed" and r["attempts"] == 2
    assert 0 <= r["metrics"]["accuracy"] <= 1 and 0 <= r["teacher"]["accuracy"] <= 1
    assert r["student"]["layers"] == 1 and r["speed"]["32x128"]["speedup"]["student"] > 0
    assert r["stages"]["teacher"]["status"] == "resumed"
    assert json.loads((run_dir / "teacher_logits" / "done.json").read_text())["info"]["rows"] == 1024

    # the terms are logged apart; the teacher is in no checkpoint and the saved student is a plain model
    state = json.loads(max(student_checkpoints(tmp_path), key=lambda p: int(p.name.split("-")[1]))
                       .joinpath("trainer_state.json").read_text())
    assert any("loss_kd" in h and "loss_ce" in h for h in state["log_history"])
    for ckpt in student_checkpoints(tmp_path):
        keys = load_file(ckpt / "model.safetensors").keys()
        assert not any(".layer.1." in k for k in keys), "a teacher layer is in the student's checkpoint"
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(run_dir / "model").num_hidden_layers == 1

    again = run_cli(*common)
    assert again.returncode == 0 and "skipped" in again.stdout


@pytest.mark.parametrize("extra", [
    ["method.loss=tinybert", "method.two_stage=true", "method.intermediate_epochs=1", "method.alpha=1.0"],
    ["method.loss=tinybert", "method.student_init=random",
     "method.student_config={hidden_size:16,intermediate_size:32}"],
    ["method.loss=sinkd", "method.alpha=0.9"],
])
def test_tinybert_and_sinkd_runs(tmp_path, shared_data, extra):
    out = run_cli(*ARGS, *extra, f"data_dir={shared_data}", f"paths.output_root={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = next(tmp_path.rglob("results.json")).parent
    r = json.loads((run_dir / "results.json").read_text())
    assert r["status"] == "completed" and "accuracy" in r["metrics"]
    saved = load_file(run_dir / "model" / "model.safetensors")
    assert not any("distill_projection" in k for k in saved)
    if "method.two_stage=true" in extra:
        assert (run_dir / "intermediate" / "done.json").exists()
        inter = json.loads((run_dir / "intermediate" / "done.json").read_text())["info"]
        assert "metrics" in inter
        last = max((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        history = json.loads((last / "trainer_state.json").read_text())["log_history"]
        logged = {k for h in history for k in h}
        assert "loss_kd" in logged and "loss_att" not in logged  # the prediction stage alone


def test_teacher_unchanged_by_training_and_absent_from_checkpoints(tmp_path, shared_data):
    from runner.distill import student as students
    from runner.distill.losses import LossParams
    from runner.methods.distill import distillation_loss
    from runner.run import make_context
    from runner.train import fit

    cfg = compose([*ARGS, "method.loss=tinybert", f"data_dir={shared_data}", "train.save_steps=2"])
    ctx = make_context(cfg, tmp_path)
    teacher = ctx.new_model()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = students.from_teacher(teacher, [1])
    params = LossParams(layer_map=[1])
    fit(ctx, student, loss_fn=distillation_loss("tinybert", params), teacher=teacher,
        train=dataclasses.replace(ctx.train, max_steps=4))
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not any(p.requires_grad for p in teacher.parameters())
    # the student moved away from its copy; its checkpoints hold its own keys only
    assert not torch.equal(student.state_dict()["bert.encoder.layer.0.attention.self.query.weight"],
                           before["bert.encoder.layer.1.attention.self.query.weight"])
    ckpt = max((tmp_path / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert set(load_file(ckpt / "model.safetensors")) <= set(student.state_dict())


@pytest.mark.parametrize("args, message", [
    (["method.temperature=0"], "error: method.temperature / method.sinkhorn_temperature must be > 0, got 0 / 2.0"),
    (["method.loss=tinybert", "method.layer_map=[5]"],
     "error: method.layer_map=[5]: teacher layers must be distinct, increasing and in [0, 1]"),
    (["method.student_layers=[0,2]"],
     "error: method.student_layers=[0, 2]: give distinct increasing layer indices in [0, 1] (the teacher has 2 layers)"),
    (["method.loss=tinybert", "method.student_init=random", "method.student_config={num_attention_heads:2}"],
     "error: TinyBERT's attention loss compares heads one to one: the teacher has 4 heads, the student 2; "
     "give the student 4 (method.student_config)"),
    (["method.two_stage=true"], "error: method.two_stage is TinyBERT's schedule; set method.loss=tinybert or two_stage=false"),
    (["method.teacher_data=labels"], "error: method.teacher_data: 'labels' is not one of subset, all"),
    (["teacher=tiny-bert", "teacher.architecture.vocab_size=1000", "method.student_init=model"],
     "error: the teacher's vocabulary (1000 tokens) differs from the student's (30522); "
     "distil from a teacher with the same tokenizer"),
])
def test_bad_configs_fail_with_one_line_before_training(tmp_path, shared_data, args, message):
    out = run_cli(*ARGS, *args, f"data_dir={shared_data}", f"paths.output_root={tmp_path}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == message
    assert not list(tmp_path.rglob("checkpoint-*")), "training started before the config was refused"


def test_regression_task_distils_with_mse_on_a_student_subset(tmp_path, shared_data):
    args = [a for a in ARGS if not a.startswith("task=")]
    out = run_cli(*args, "task=glue/stsb", "method.loss=sinkd", "method.student_train_samples=64", "train.logging_steps=2",
                  f"data_dir={shared_data}", f"paths.output_root={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = next(tmp_path.rglob("results.json")).parent
    r = json.loads((run_dir / "results.json").read_text())
    assert r["status"] == "completed" and "pearson" in r["metrics"] and "pearson" in r["teacher"]
    ckpt = max((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["global_step"] == 4  # 64 examples / batch 16, one epoch: the subset, not the 256 rows
    assert any("loss_sinkhorn" in h and "loss_kd" in h for h in state["log_history"])


def test_transfer_all_trains_on_every_row_with_gold_labels_on_the_subset_only(tmp_path, shared_data):
    from types import SimpleNamespace

    import datasets

    from runner.methods.distill import Config, student_data

    train = datasets.Dataset.from_dict({"input_ids": [[i + 5] for i in range(50)], "labels": [i % 2 for i in range(50)]})
    ctx = SimpleNamespace(seed=3, data={"train": train}, task=SimpleNamespace(is_regression=False),
                          method=Config(student_train_samples=10))
    labelled = student_data(ctx)
    ctx.method = Config(student_train_samples=10, transfer="all")
    transfer = student_data(ctx)
    assert len(labelled) == 10 and len(transfer) == 50
    kept = {row[0]: lab for row, lab in zip(transfer["input_ids"], transfer["labels"], strict=True) if lab != -100}
    # the labelled rows are exactly the transfer=labeled subset, with their gold labels
    assert kept == dict(zip((r[0] for r in labelled["input_ids"]), labelled["labels"], strict=True))
    # end to end: the student steps through all rows (the teacher's cached logits cover them)
    out = run_cli(*ARGS, "method.student_train_samples=16", "method.transfer=all", "train.logging_steps=2",
                  f"data_dir={shared_data}", f"paths.output_root={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = next(tmp_path.rglob("results.json")).parent
    ckpt = max((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["global_step"] > 1  # more than the 16 labelled rows' one batch
    assert any("loss_kd" in h and "loss_ce" in h for h in state["log_history"])
    refused = run_cli(*ARGS, "method.transfer=all", f"data_dir={shared_data}", f"paths.output_root={tmp_path}/x")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith("error: method.transfer=all")


def test_teacher_data_subset_is_the_students_labelled_rows_and_all_the_whole_set():
    from types import SimpleNamespace

    import datasets

    from runner.methods.distill import Config, student_data, teacher_data_info, teacher_subset

    train = datasets.Dataset.from_dict({"input_ids": [[i + 5] for i in range(50)], "labels": [i % 2 for i in range(50)]})
    ctx = SimpleNamespace(seed=3, data={"train": train}, task=SimpleNamespace(is_regression=False),
                          method=Config(student_train_samples=10))
    assert teacher_subset(ctx)["input_ids"] == student_data(ctx)["input_ids"]  # the same seeded 10 rows
    assert teacher_data_info(ctx) == {"train_samples": 10, "data": "subset"}
    ctx.method = Config(student_train_samples=10, transfer="all")
    assert len(teacher_subset(ctx)) == 10 and len(student_data(ctx)) == 50
    ctx.method = Config(student_train_samples=10, teacher_data="all")
    assert teacher_subset(ctx) is None and teacher_data_info(ctx) == {"train_samples": 50, "data": "all"}
    ctx.method = Config(student_train_samples=None)  # no low-data setting: the teacher learns from everything
    assert teacher_subset(ctx) is None and teacher_data_info(ctx)["train_samples"] == 50
    ctx.method = Config(student_train_samples=60)  # a "subset" as large as the set is the set
    assert teacher_subset(ctx) is None
    ctx.method = Config(student_train_samples=10, teacher_run="/some/run")  # a given teacher: its data is unknown
    assert teacher_data_info(ctx)["train_samples"] is None


def test_teacher_learns_from_the_labelled_subset_unless_teacher_data_all(tmp_path, shared_data):
    """End to end: the teacher stage trains on the student's 32 labelled rows (2 steps of 16), results.json
    says so, and teacher_data=all gives another teacher stage (another key) trained on all 256 rows."""
    common = [*ARGS, "method.student_train_samples=32", "method.transfer=all", f"data_dir={shared_data}",
              f"paths.output_root={tmp_path}"]
    for data in ("subset", "all"):
        out = run_cli(*common, f"method.teacher_data={data}")
        assert out.returncode == 0, out.stderr[-3000:]
    runs = {}
    for path in safe_rglob(tmp_path, "results.json"):
        r = json.loads(path.read_text())
        runs[r["config"]["method"]["teacher_data"]] = (path.parent, r)
    assert set(runs) == {"subset", "all"}
    stages = {}
    for data, (run_dir, r) in runs.items():
        assert r["status"] == "completed"
        assert r["teacher"]["data"] == data and r["config"]["method"]["teacher_data"] == data
        done = json.loads((run_dir / "teacher" / "done.json").read_text())
        stages[data] = done["digest"]
        assert r["stages"]["teacher"]["status"] == "computed"  # not shared between the two
        assert done["info"]["train_rows"] == r["teacher"]["train_samples"]
    assert runs["subset"][1]["teacher"]["train_samples"] == 32 and runs["all"][1]["teacher"]["train_samples"] == 256
    assert stages["subset"] != stages["all"]
    assert json.loads((runs["subset"][0] / "teacher" / "done.json").read_text())["key"]["train_rows"] == {
        "labelled_subset": 32, "seed": 42}
    assert "train_rows" not in json.loads((runs["all"][0] / "teacher" / "done.json").read_text())["key"]
    # the transfer set is every row for both: the teacher's logits cover all 256
    for run_dir, _ in runs.values():
        assert json.loads((run_dir / "teacher_logits" / "done.json").read_text())["info"]["rows"] == 256


def test_recipe_arms_never_share_a_run_directory():
    """The arms differ in keys set in their YAML body; the sweep puts them in the directory name too."""
    import yaml


    seen = set()
    for arm in ("ce", "kd", "tinybert", "sinkd", "tinybert4"):
        params = yaml.safe_load((ROOT / "recipes" / "distill" / f"{arm}.yaml").read_text())["hydra"]["sweeper"]["params"]
        key = (params["method.loss"], params["method.alpha"], params.get("method.student_init", "copy"))
        assert key not in seen, f"arm {arm} would write into another arm's run directories"
        seen.add(key)


@pytest.mark.slow  # three runs and the script: ~2 min (make test-full)
def test_layer_choice_diagnostic_reads_the_copied_students_and_the_intermediate_stage(tmp_path, shared_data):
    """recipes/distill/diagnose_layers.py (the README's TinyBERT section): a CE and a TinyBERT student copied from
    teacher layer 1, and the consecutive copy of layer 0 measured as cut only."""
    import subprocess
    import sys

    common = [*(a for a in ARGS if not a.startswith("method.student_layers")), "method.student_layers=[1]",
              f"data_dir={shared_data}", f"paths.output_root={tmp_path}"]
    two_stage = ["method.loss=tinybert", "method.two_stage=true", "method.intermediate_epochs=1", "method.alpha=1.0"]
    random_init = [*two_stage, "method.student_init=random", "method.student_config={hidden_size:16,intermediate_size:32}"]
    for extra in (["method.alpha=0.0"], two_stage, random_init):
        out = run_cli(*common, *extra)
        assert out.returncode == 0, out.stderr[-3000:]
    root = next(p for p in safe_rglob(tmp_path, "results.json") if p.parent.name.startswith("seed")).parents[2]
    tiny = [a for a in ARGS if not a.startswith(("task=", "method"))]
    script = str(ROOT / "recipes" / "distill" / "diagnose_layers.py")
    proc = subprocess.run([sys.executable, script, "--task", "sst2", "--seed", "42", "--sentences", "16", "--root",
                           str(root), "--cut", "[0]", *tiny, f"data_dir={shared_data}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    arms = json.loads(proc.stdout[proc.stdout.index("{"):])["arms"]
    assert set(arms) == {"kd alpha=0.0 layers=[1]", "tinybert alpha=1.0 layers=[1]", "cut only, layers=[0]",
                         "tinybert alpha=1.0 layers=[1] random init"}
    scratch = arms.pop("tinybert alpha=1.0 layers=[1] random init")  # another width: no gaps, its spread and losses
    assert 0 <= scratch["trained"]["majority_share"] <= 1 and scratch["loss"] and scratch["intermediate_loss"]
    assert arms["cut only, layers=[0]"]["cut"]["output_gap"] == [0.0]  # the copied prefix is exact
    assert arms["kd alpha=0.0 layers=[1]"]["cut"]["output_gap"][0] > 0  # layer 1 now reads the embeddings
    assert "intermediate" in arms["tinybert alpha=1.0 layers=[1]"] and "intermediate" not in arms["kd alpha=0.0 layers=[1]"]
    for arm in (arms["kd alpha=0.0 layers=[1]"], arms["tinybert alpha=1.0 layers=[1]"]):
        assert 0 <= arm["trained"]["metric"] <= 1 and arm["loss"] and arm["trained"]["head_gap"] >= 0
    missing = subprocess.run([sys.executable, script, "--root", str(tmp_path / "nothing")], capture_output=True,
                             text=True, cwd=ROOT, timeout=120)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
