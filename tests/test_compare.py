"""The cross-method comparison (runner/tables/compare.py): Pareto frontiers, the dense reference of each method
family, the facts read from results.json, the rules for what is true by definition, and the files it writes."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import pytest

from runner.tables.collect import collect
from runner.tables.compare import gather, main
from runner.tables.facts import run_facts
from runner.tables.pareto import frontier
from runner.tables.points import run_points
from tests.conftest import ROOT
from tests.test_tables import write_run


def test_frontier_on_hand_made_points():
    # (speedup, % of dense): (1.0, 100) and (2.0, 99) and (1.6, 99.5) trade off; (2.0, 95) and (1.0, 98) are
    # dominated; a duplicate of a frontier point stays on it
    xy = [(1.0, 100.0), (2.0, 99.0), (1.6, 99.5), (2.0, 95.0), (1.0, 98.0), (1.6, 99.5)]
    assert frontier(xy, maximize_x=True) == [0, 1, 2, 5]
    # trainable %: fewer is better
    xy = [(100.0, 100.0), (0.05, 97.0), (0.3, 100.5), (0.5, 96.0), (0.04, 92.0)]
    assert frontier(xy, maximize_x=False) == [1, 2, 4]
    assert frontier([], maximize_x=True) == []


def family_runs(root: Path) -> None:
    """One run folder with a setting of every method family (seeds 1 and 2) on SST-2."""
    for seed, acc in ((1, 0.80), (2, 0.84)):
        write_run(root, seed, {"accuracy": acc}, parameters={"total": 1000, "trainable": 1000},
                  train={"train_runtime": 10.0})
        write_run(root, seed, {"accuracy": acc - 0.04}, method="peft", method_keys={"peft": "lora"}, tag="lora",
                  trainable={"count": 8, "total": 1008, "percent": 0.79})
        write_run(root, seed, {"accuracy": acc - 0.1}, method="peft", method_keys={"peft": "prompt"},
                  tag="prompt")
        write_run(root, seed, {"accuracy": acc - 0.02, "teacher.accuracy": acc + 0.02}, method="distill",
                  speed={"reference": "teacher", "1x64": {"speedup": {"teacher": 1.0, "student": 1.8}},
                         "32x128": {"speedup": {"teacher": 1.0, "student": 2.0}}})
        write_run(root, seed, {"accuracy": acc - 0.05}, method="prune", method_keys={"pruner": "structured"},
                  tag="structured",
                  dense={"accuracy": acc}, speed={"reference": "dense", "32x128": {"speedup": {"dense": 1.0,
                                                                                                "pruned": 1.5}}})
        write_run(root, seed, {"accuracy": acc - 0.08}, method="prune", method_keys={"pruner": "movement"},
                  tag="movement",
                  dense={"accuracy": acc})
        ratios = {"0.25": {"accuracy": acc - 0.06}}
        write_run(root, seed, {"accuracy": acc, "accuracy@0.25": acc - 0.06, "relu_accuracy": acc + 0.01},
                  method="moefication", method_keys={"relufy": True}, ratios=ratios,
                  speed={"reference": "dense", "32x128": {"speedup": {"dense": 1.0, "moe@0.25": 1.4}}})
        write_run(root, seed, {"loss": 5.0}, method="ki", task="pretrain/wikitext")


def test_dense_reference_of_each_method_family(tmp_path):
    runs = tmp_path / "runs"
    family_runs(runs)
    points = {p.method: p for p in run_points(collect([runs]), str(runs), "glue/sst2", None)}
    assert set(points) == {"finetune", "peft (lora)", "peft (prompt)", "distill", "prune (structured)",
                           "prune (movement)", "moefication"}  # KI pre-training has no SST-2 metric
    ft = points["finetune"]
    assert ft.reference == "itself (the dense model)" and ft.relative[0] == pytest.approx(100.0)
    lora = points["peft (lora)"]
    assert lora.reference.startswith("fine-tuning run finetune/glue/sst2/minilm")
    assert lora.relative[0] == pytest.approx((76 / 80 + 80 / 84) / 2 * 100)  # per seed, then the mean
    distill = points["distill"]
    assert distill.reference == "the teacher (same run)"
    assert distill.relative[0] == pytest.approx((78 / 82 + 82 / 86) / 2 * 100)
    assert points["prune (structured)"].reference == "the dense stage (same run)"
    assert points["prune (structured)"].relative[0] == pytest.approx((75 / 80 + 79 / 84) / 2 * 100)
    moe = points["moefication"]
    assert moe.metric_name == "accuracy@0.25" and moe.reference == "the ReLU-fied dense model (same run)"
    assert moe.relative[0] == pytest.approx((74 / 81 + 78 / 85) / 2 * 100)
    # without a fine-tuning run of the same model and task, a PEFT setting has no reference, and says so
    alone = tmp_path / "alone"
    write_run(alone, 1, {"accuracy": 0.7}, method="peft", method_keys={"peft": "ln"})
    (point,) = run_points(collect([alone]), str(alone), "glue/sst2", None)
    assert point.relative[0] is None and "no finetune run of minilm" in point.notes["relative"]


def test_speedups_are_measured_or_true_by_definition_and_say_so(tmp_path):
    runs = tmp_path / "runs"
    family_runs(runs)
    points = {p.method: p for p in run_points(collect([runs]), str(runs), "glue/sst2", None)}
    assert points["distill"].values["speed_32x128"] == pytest.approx(2.0)
    assert points["distill"].values["speed_1x64"] == pytest.approx(1.8) and "speed_32x128" not in points["distill"].notes
    assert points["moefication"].values["speed_32x128"] == pytest.approx(1.4)
    assert points["prune (structured)"].values["speed_32x128"] == pytest.approx(1.5)
    for method, why in (("peft (lora)", "LoRA merged"), ("prune (movement)", "unstructured zeros"),
                        ("finetune", "the dense model itself")):
        assert points[method].values["speed_32x128"] == 1.0
        assert points[method].notes["speed_32x128"].startswith("1.0 by definition") and why in points[method].notes["speed_32x128"]
    prompt = points["peft (prompt)"]
    assert "speed_32x128" not in prompt.values and "virtual tokens" in prompt.notes["speed_32x128"]
    assert points["peft (lora)"].values["trainable_pct"] == pytest.approx(0.79)
    assert points["finetune"].values["trainable_pct"] == pytest.approx(100.0)
    assert points["finetune"].values["train_s"] == pytest.approx(10.0)


def test_run_facts_read_each_family_layout(tmp_path):
    speed = {"reference": "dense", "1x64": {"speedup": {"dense": 1.0, "moe@0.1": 0.9, "moe@0.25": 1.2}}}
    assert run_facts({"speed": speed}, "accuracy@0.25") == {"speed_1x64": 1.2}
    assert run_facts({"speed": speed}, "accuracy") == {}  # two candidates: no guess
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"0" * 2_000_000)
    facts = run_facts({"parameters": {"total": 200, "trainable": 50}, "train": {"train_runtime": 3.5}},
                      "accuracy", tmp_path)
    assert facts == {"parameters": 200.0, "trainable_pct": 25.0, "size_mb": 2.0, "train_s": 3.5}
    assert run_facts({"saved": {"bytes": 300_000}}, "accuracy", tmp_path)["size_mb"] == pytest.approx(0.3)
    # a compress chain deploys its last step: named by `deployed`, or by the last row of `steps` without it
    chain = {"1x64": {"speedup": {"dense": 1.0, "prune": 1.6, "prune+quantize": 3.6}}, "reference": "dense"}
    steps = [{"chain": "prune", "parameters": 18, "size_mb": 72.0}, {"chain": "prune+quantize", "parameters": 18,
                                                                      "size_mb": 54.0}]
    expect = {"speed_1x64": 3.6, "parameters": 18.0, "size_mb": 54.0}
    assert run_facts({"speed": chain, "steps": steps}, "accuracy") == expect
    deployed = {"model": "prune+quantize", "parameters": 18, "size_mb": 54.0}
    assert run_facts({"speed": chain, "steps": steps[:1], "deployed": deployed}, "accuracy") == expect


def test_compare_cli_writes_the_table_plots_and_a_self_contained_page(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    family_runs(runs)
    assert main([str(runs), "--task", "glue/sst2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| # | method | setting | source |" in printed and "1.0 by definition" in printed
    names = {p.name for p in out.iterdir()}
    assert names == {"compare.md", "compare.csv", "compare.tex", "compare-speed.png", "compare-trainable.png",
                     "compare.html"}
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert len(rows) == 7 and any("speed" in r["frontier"] for r in rows) and any("trainable" in r["frontier"] for r in rows)
    page = (out / "compare.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "http" not in page.split("<body>", 1)[1]  # nothing fetched from the network
    # several tasks and no --task: one line naming the fix
    write_run(runs, 1, {"pearson": 0.8}, task="glue/stsb")
    assert main([str(runs), "--out", str(out)]) == 2
    assert "pass --task" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere")]) == 2 and "no such folder" in capsys.readouterr().err


def test_committed_recipes_give_the_sst2_comparison_on_a_fresh_checkout(tmp_path, monkeypatch):
    """`python -m runner.tables.compare recipes/ --task glue/sst2` from committed numbers alone."""
    monkeypatch.setenv("PLM_OUTPUT_ROOT", str(tmp_path / "no-runs"))
    not_run: list = []
    points = gather([ROOT / "recipes"], "glue/sst2", None, not_run)
    families = {p.method.split(" (")[0] for p in points}
    assert {"distill", "prune", "moefication", "peft", "finetune"} <= families
    assert {"prune (structured)", "prune (movement)", "prune (magnitude)"} <= {p.method for p in points}
    assert all(p.source.endswith("(committed)") for p in points)
    assert all(p.task == "glue/sst2" and p.relative[0] is not None for p in points)
    assert any("speed" in p.frontier for p in points) and any("trainable" in p.frontier for p in points)
    structured = next(p for p in points if p.method == "prune (structured)")
    assert structured.values["speed_32x128"] == pytest.approx(1.62, abs=0.01) and "speed_32x128" not in structured.notes
    for p in points:  # every empty cell says why
        for key in ("speed_1x64", "speed_32x128", "parameters", "trainable_pct", "size_mb", "train_s"):
            assert key in p.values or p.notes.get(key), (p.name, key)


def test_runs_of_a_recipe_read_through_it_are_not_counted_twice(tmp_path, monkeypatch):
    root = tmp_path / "outputs"
    monkeypatch.setenv("PLM_OUTPUT_ROOT", str(root))
    folder = tmp_path / "paper"
    folder.mkdir()
    (folder / "expected.csv").write_text("label,task.name,method.name,metric,point\n"
                                         "FT,glue/sst2,finetune,accuracy,fine-tuning\n")
    (folder / "sst2.yaml").write_text("# @package _global_\npaths:\n"
                                      "  output_root: ${oc.env:PLM_OUTPUT_ROOT,outputs}/recipes/paper\n")
    write_run(root / "recipes" / "paper", 1, {"accuracy": 0.8})
    write_run(root, 1, {"accuracy": 0.7}, lr=1e-4)  # a plain run
    points = gather([root, folder], "glue/sst2", None)
    assert sorted((p.source, round(p.metric[0], 1)) for p in points) == [
        (str(root), 70.0), ("paper (runs here)", 80.0)]
    assert json.loads((root / "recipes/paper/finetune/glue/sst2/minilm/default/seed1/results.json").read_text())


def test_a_committed_table_carries_what_the_comparison_needs(tmp_path, monkeypatch):
    """A recipe table written from runs keeps their speedups, parameters, size and time (CSV columns); the
    comparison reads them back on a checkout without the runs. A point's own measurement wins over one it
    shares with other points."""
    from runner.tables import make_table

    monkeypatch.setenv("PLM_OUTPUT_ROOT", str(tmp_path / "outputs"))
    folder = tmp_path / "paper"
    folder.mkdir()
    (folder / "expected.csv").write_text(
        "label,task.name,method.name,method.loss,metric,relative_to,point\n"
        "KD,glue/sst2,distill,kd,accuracy,,KD\n"
        "KD % of teacher,glue/sst2,distill,kd,accuracy,metric=teacher.accuracy,KD\n"
        "CE,glue/sst2,distill,ce,accuracy,,CE\n"
        "speed,glue/sst2,distill,ce,speed.32x128.speedup.student,,CE|KD\n")
    elsewhere = tmp_path / "elsewhere"
    for seed in (1, 2):
        for loss, speedup in (("kd", 2.0), ("ce", 1.9)):
            write_run(elsewhere, seed, {"accuracy": 0.8, "teacher.accuracy": 0.85}, method="distill",
                      method_keys={"loss": loss}, tag=loss, parameters={"total": 10_000_000, "trainable": 10_000_000},
                      train={"train_runtime": 60.0 + seed},
                      speed={"reference": "teacher", "32x128": {"speedup": {"teacher": 1.0, "student": speedup}}})
    make_table(folder, runs=[elsewhere], out=folder / "results", committed=False)  # the committed table
    rows = list(csv.DictReader(open(folder / "results" / "paper.csv")))
    assert float(rows[0]["speed_32x128"]) == pytest.approx(2.0) and float(rows[0]["train_s"]) == pytest.approx(61.5)
    kd, ce = gather([folder], "glue/sst2", None)  # a fresh checkout: no run under outputs/
    assert kd.source == "paper (committed)" and kd.relative[0] == pytest.approx(100 * 0.8 / 0.85)
    assert kd.values["speed_32x128"] == pytest.approx(2.0) and "speed_32x128" not in kd.notes  # its own runs
    assert kd.values["parameters"] == 10_000_000 and kd.values["train_s"] == pytest.approx(61.5)
    assert ce.values["speed_32x128"] == pytest.approx(1.9) and "speed_32x128" not in ce.notes
