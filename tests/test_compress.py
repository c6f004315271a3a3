"""method=compress (issue 31): a chain of methods on tiny-bert runs and reports every step, resumes when killed
between steps without redoing finished ones, skips when complete, shares a prefix with another chain, carries
MoEfied and pruned models from step to step, and refuses orders that cannot run in one line."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import TINY_SST2, kill_when, run_cli, safe_rglob
from tests.test_bad_input import error_line

ARGS = [*TINY_SST2, "method=compress", "method.distill.student_layers=[1]", "method.speed_repeats=1",
        "method.moefication.expert_size=8", "method.moefication.collect_tokens=2000", "method.moefication.router_epochs=3"]
# the int8 step on ONNX Runtime when the quant extra is installed, else in torch
QUANT = [] if __import__("importlib").util.find_spec("onnxruntime") else ["method.quantize.backend=torch"]


def results(root) -> dict:
    files = [p for p in safe_rglob(root, "results.json") if "step" not in p.parent.name and p.parent.name.startswith("seed")]
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_a_chain_reports_every_step_and_skips_when_complete(tmp_path, shared_data):
    common = [*ARGS, *QUANT, f"data_dir={shared_data}", f"paths.output_root={tmp_path}"]
    out = run_cli(*common)
    assert out.returncode == 0, out.stderr[-3000:]
    got = results(tmp_path)
    steps = got["steps"]
    assert [s["chain"] for s in steps] == ["prune", "prune+distill", "prune+distill+quantize"]
    dense_params = got["dense"]["parameters"]
    assert steps[0]["parameters"] < dense_params and steps[1]["parameters"] < steps[0]["parameters"]
    for step in steps:
        assert 0 <= step["metric"] <= 1 and step["relative"] == pytest.approx(step["metric"] / got["dense"]["accuracy"])
        assert step["speedup_1x64"] > 0 and step["speedup_32x128"] > 0 and step["size_mb"] > 0
        sub = json.loads((tmp_path / step["path"].split(str(tmp_path) + "/")[1] / "results.json").read_text())
        assert sub["status"] == "completed" and sub["config"]["method"]["name"] == step["step"]
    # each step's base is the one before: the distilled student has the pruned model's kept layer
    distill_cfg = json.loads((tmp_path / steps[1]["path"].split(str(tmp_path) + "/")[1] / "results.json").read_text())
    assert distill_cfg["config"]["method"]["student_run"].endswith("step1-prune")
    assert got["metrics"]["accuracy"] == steps[-1]["metric"]
    assert set(got["speed"]["32x128"]["ms"]) == {"dense", "prune", "prune+distill", "prune+distill+quantize"}

    again = run_cli(*common)
    assert again.returncode == 0 and "skipped: already completed" in again.stdout

    other = run_cli(*[a for a in common if not a.startswith("method.distill")], "method.steps=[prune,quantize]")
    assert other.returncode == 0, other.stderr[-3000:]
    assert "stage step1-prune: reusing" in other.stdout + other.stderr  # the prefix another chain computed


def test_killed_between_steps_resumes_without_redoing_finished_steps(tmp_path, shared_data):
    root = tmp_path / "killed"
    common = [*ARGS, *QUANT, f"data_dir={shared_data}", f"paths.output_root={root}"]
    kill_when(common, lambda: bool(safe_rglob(root, "step1-prune/done.json")), "its first step was done")
    first = next(iter(safe_rglob(root, "step1-prune/done.json")))
    assert not list(safe_rglob(root, "step3-quantize/done.json"))
    stamp = first.stat().st_mtime_ns

    resumed = run_cli(*common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "stage step1-prune: already done" in log and "stage step3-quantize: computing" in log
    assert first.stat().st_mtime_ns == stamp  # the finished step was not redone
    got = results(root)
    assert got["attempts"] == 2 and len(got["steps"]) == 3


def test_moefied_model_is_the_base_of_the_int8_step(tmp_path, shared_data):
    out = run_cli(*ARGS, "method.steps=[moefication,quantize]", "method.quantize.backend=torch",
                  f"data_dir={shared_data}", f"paths.output_root={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    got = results(tmp_path)
    moe_step = got["steps"][0]
    sub = json.loads(safe_rglob(tmp_path, "step1-moefication/results.json")[0].read_text())
    # the saved MoE model, reloaded, scores what the moefication run measured at its ratio
    assert moe_step["metric"] == pytest.approx(sub["metrics"]["accuracy@0.25"])
    assert safe_rglob(tmp_path, "step1-moefication/model/moe.json")[0].exists()
    quant = json.loads(safe_rglob(tmp_path, "step2-quantize/results.json")[0].read_text())
    assert quant["quantized"]["backend"] == "torch" and quant["fp32"]["accuracy"] == pytest.approx(moe_step["metric"])


@pytest.mark.parametrize("overrides,fix", [
    (["method.steps=[prune,jpeg]"], "unknown step jpeg"),
    (["method.steps=[quantize,prune]"], "quantize must be the last step"),
    (["method.steps=[moefication,distill]"], "only quantize may follow moefication"),
    (["method.steps=[prune,prune]"], "repeats a step"),
    (["method.prune.base_run=/tmp"], "set by the chain"),
    (["method.steps=[moefication]", "method.moefication.ratios=[0.25,0.5]"], "one share of experts"),
    (["method.steps=[moefication,quantize]", "method.quantize.backend=onnxruntime"], "method.quantize.backend=torch"),
    (["method.prune.heads=1.5"], "method.heads=1.5"),
    (["method.quantize.bits=5"], "int8 or int4"),
    (["+method.distill.stuent_layers=[0]"], "did you mean method.distill.student_layers"),
])
def test_bad_chains_are_one_line_before_any_training(tmp_path, shared_data, overrides, fix):
    out = run_cli(*ARGS, *overrides, f"data_dir={shared_data}", f"paths.output_root={tmp_path}")
    assert fix in error_line(out)
    assert not list(tmp_path.rglob("results.json")) and not list(tmp_path.rglob("checkpoint-*"))


def test_a_pruned_model_cut_to_fewer_layers_keeps_each_layers_shapes_and_reloads(tmp_path):
    """keep_layers on a physically pruned model (a chain's distillation after pruning), saved and loaded back."""
    from runner import artifacts
    from runner.models import ModelConfig, arch, load_model
    from tests.test_quant import tiny_bert

    model = tiny_bert()
    arch.prune_heads(model, {0: [0, 1], 1: [3]})
    arch.prune_ffn(model, {0: list(range(10)), 1: list(range(20, 60))})
    student = arch.keep_layers(model, [1]).eval()
    assert arch.layer_sizes(student) == {"heads": [3], "ffn": [40]}
    x = {"input_ids": torch.randint(0, 30522, (2, 9))}
    with torch.no_grad():  # layer 1 of the source, now layer 0, computes as it did (same weights, same shapes)
        assert torch.equal(student.bert.encoder.layer[0].intermediate.dense.weight,
                           model.bert.encoder.layer[1].intermediate.dense.weight)
        expected = student(**x).logits
    saved = tmp_path / "model"
    student.save_pretrained(saved)
    artifacts.write_plan(student, saved)  # what artifacts.save_model writes beside a pruned model
    reloaded = load_model(ModelConfig(name="pruned", family="bert"), "classification", num_labels=3, path=str(saved))
    with torch.no_grad():
        assert torch.allclose(reloaded(**x).logits, expected, atol=1e-6)


@pytest.mark.slow  # two chains and the script: ~75 s (make test-full)
def test_layer_choice_diagnostic_compares_two_distilled_chains(tmp_path, shared_data):
    """recipes/bmcook/diagnose_layers.py (the README's layer-choice section): two prune -> distill chains that
    differ in the student's layers; the kept consecutive prefix has no input shift, a skipped layer has one."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    common = [*ARGS, f"data_dir={shared_data}", f"paths.output_root={tmp_path}", "method.steps=[prune,distill]"]
    for layers in ("[0]", "[1]"):
        out = run_cli(*common, f"method.distill.student_layers={layers}")
        assert out.returncode == 0, out.stderr[-3000:]
    root = next(p for p in safe_rglob(tmp_path, "results.json") if p.parent.name.startswith("seed")).parents[2]
    tiny = [a for a in TINY_SST2 if not a.startswith("task=")]
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "bmcook" / "diagnose_layers.py"), "--task", "sst2",
                           "--seed", "42", "--sentences", "16", "--root", str(root), *tiny,
                           f"data_dir={shared_data}", "task.max_train_samples=64"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert set(report["arms"]) == {"[0]", "[1]"}
    assert report["arms"]["[0]"]["input_shift"] == [0.0]  # layer 0's input is the embeddings either way
    assert report["arms"]["[1]"]["input_shift"][0] > 0  # layer 1 now reads the embeddings, not layer 0's output
    for arm in report["arms"].values():
        assert 0 <= arm["cut"] <= 1 and 0 <= arm["trained"] <= 1 and arm["loss"]
    missing = subprocess.run([sys.executable, str(ROOT / "recipes" / "bmcook" / "diagnose_layers.py"), "--root",
                              str(tmp_path / "nothing")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
