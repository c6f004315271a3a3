"""method=prune end to end through the CLI on tiny models (SST-2 rows), and its one-line config errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from runner.models import arch
from tests.conftest import ROOT, TINY_SST2, run_cli

TINY = [a for a in TINY_SST2 if not a.startswith("model=")]


def cli(tmp_path, *args):
    return run_cli(*TINY, "method=prune", f"paths.output_root={tmp_path}", *args)


def results(tmp_path) -> dict:
    found = list(tmp_path.rglob("results.json"))
    prune = [p for p in found if "/prune/" in str(p)]
    assert len(prune) == 1, found
    return json.loads(prune[0].read_text())


@pytest.mark.parametrize("args", [
    ["method.sparsity=1.0"], ["method.sparsity=-0.1"], ["method.pruner=random"], ["method.heads=1.5"],
    ["method.pruner=heads", "method.heads=0.9"],  # tiny-bert: 8 heads in 2 layers; 7 removed empties one
    ["method.pruner=heads", "model=tiny-t5"],
    ["method.pruner=movement", "method.scope=global"],
    ["method.pruner=heads", "method.order_seed=1"],  # an order seed without the random order
    ["method.pruner=heads", "method.head_importance=taylor"],
    ["method.pruner=heads", "method.head_importance=attattr", "method.attr_steps=0"],
    ["method.pruner=pst", "method.pst_rank=0"],
    ["method.pruner=skill", "method.ffn_layers=[5]"],  # tiny-bert has 2 layers
    ["method.pruner=skill", "model=tiny-t5"],  # T5's W_out has no bias to fold the means into
    ["method.pruner=skill", "method.skill_examples=1"],
    ["method.pruner=cap", "model=tiny-t5"],
    ["method.pruner=ffn", "method.contrastive=true", "method.recovery_epochs=0"],
    ["method.pruner=heads", "method.head_importance=attattr", "model=tiny-t5"],
    ["method.dense_epochs=0"],
])
def test_bad_configs_fail_with_one_line(tmp_path, shared_data, args):
    proc = cli(tmp_path, "model=tiny-bert", *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert not list(tmp_path.rglob("checkpoint-*"))  # refused before any training


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-roberta", "tiny-electra", "tiny-t5"])
def test_movement_pruning_end_to_end(tmp_path, shared_data, model):
    proc = cli(tmp_path, f"model={model}", "method.pruner=movement", "method.sparsity=0.75", "method.end=0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(tmp_path)
    sparsity = res["sparsity"]
    # every matrix reaches exactly its target after the schedule's end
    for name, value in sparsity["per_matrix"].items():
        assert value == pytest.approx(0.75, abs=0.01), name
    assert res["remaining"] == pytest.approx(0.25, abs=0.01)
    assert "accuracy" in res["metrics"]


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-t5"])
def test_pst_end_to_end_trains_only_its_low_rank_parameters_and_the_head(tmp_path, shared_data, model):
    proc = cli(tmp_path, f"model={model}", "method.pruner=pst", "method.sparsity=0.75", "method.end=0.5",
               "method.pst_rank=4", "method.pst_mask_rank=2", "method.pst_lr=1e-3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(tmp_path)
    for name, value in res["sparsity"]["per_matrix"].items():
        assert value == pytest.approx(0.75, abs=0.01), name
    pruned = res["sparsity"]["per_matrix"]
    assert len(pruned) > 0
    trainable = res["trainable"]
    # per matrix (out + in) (r + r_mask) + out + in; the pruned matrices' sizes are in the run's model
    assert trainable["parameters"] == trainable["mask"] + trainable["weights"]
    assert trainable["share"] < 0.1 and trainable["mask"] > 0 and trainable["weights"] > 0  # the head
    from safetensors import safe_open
    saved = next(p for p in tmp_path.rglob("model.safetensors") if "/dense/" not in str(p))
    with safe_open(saved, "pt") as f:
        keys = list(f.keys())
    assert keys and not any("parametrizations" in k for k in keys)  # the merged sparse weights, no U, V, A, B


@pytest.mark.parametrize("args", [
    ["method.pruner=magnitude", "method.scope=global", "method.sparsity=0.9"],
    ["method.pruner=soft_movement", "method.alpha_kd=0.5", "method.l1_lambda=5"],
])
def test_magnitude_and_soft_movement_with_kd(tmp_path, shared_data, args):
    proc = cli(tmp_path, "model=tiny-bert", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(tmp_path)
    if "method.pruner=magnitude" in args:
        assert res["sparsity"]["overall"] == pytest.approx(0.9, abs=1e-4)
    else:
        assert 0 < res["remaining"] <= 1 and "accuracy" in res["dense"]
        # the dense teacher's logits are computed once, as a shared stage, not every step
        assert res["stages"]["teacher_logits"]["status"] == "computed"
        logged = json.dumps(res)
        assert res["sparsity"]["pruned_parameters"] > 0 and "per_matrix" in logged


@pytest.mark.parametrize(("model", "pruner"), [("tiny-bert", "structured"), ("tiny-roberta", "heads"),
                                               ("tiny-electra", "ffn"), ("tiny-t5", "ffn")])
def test_structured_pruning_end_to_end_and_reload(tmp_path, shared_data, model, pruner):
    from runner.prune import plan

    proc = cli(tmp_path, f"model={model}", f"method.pruner={pruner}", "method.heads=0.25", "method.ffn=0.5",
               "method.head_step=0.125", "method.importance_batches=2", "method.recovery_epochs=0.5",
               "method.alpha_kd=0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(tmp_path)
    # physical removal is exact: the pruned model scores like the gated one
    assert res["before_recovery"]["accuracy"] == pytest.approx(res["gated"]["accuracy"])
    assert "teacher_logits" in res["stages"]  # recovery KD reads the dense model's cached logits
    if model != "tiny-t5":
        assert set(res["speed"]["32x128"]["speedup"]) >= {"pruned"}
    sizes = res["sizes"]
    if pruner in ("ffn", "structured"):
        assert sizes["ffn"] == [32, 32]
    if pruner in ("heads", "structured"):
        assert sum(sizes["heads"]) == 8 - 2
    model_dir = next(p.parent for p in tmp_path.rglob(arch.PLAN_FILE) if "/prune/" in str(p))
    loaded = plan.load_pruned(model_dir)
    assert arch.layer_sizes(loaded) == sizes
    ids = torch.randint(1000, 2000, (2, 12))
    ids[:, -1] = 102
    with torch.no_grad():
        out = loaded(input_ids=ids).logits
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    # a pruned run serves as another run's base or teacher: the shared loader reads its plan too
    from runner.artifacts import run_model_config
    from runner.models import load_model

    shared = load_model(run_model_config(model_dir), "classification", num_labels=2, path=str(model_dir)).eval()
    assert arch.layer_sizes(shared) == sizes
    with torch.no_grad():
        assert torch.allclose(shared(input_ids=ids).logits, out, atol=1e-6)


def test_head_curve_scores_every_round_and_nests_with_shorter_runs(tmp_path, shared_data):
    # one run to 50% of the 8 heads, one head per round, scored after each round (Michel et al.'s curve) ...
    common = ("model=tiny-bert", "method.pruner=heads", "method.head_step=0.125", "method.importance_batches=2",
              "method.recovery_epochs=0")
    proc = cli(tmp_path / "curve", *common, "method.heads=0.5", "method.head_curve=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(tmp_path / "curve")
    curve = res["curve"]
    assert list(curve) == ["0", "1", "2", "3", "4"]
    assert [p["share"] for p in curve.values()] == [0.0, 0.125, 0.25, 0.375, 0.5]
    assert curve["0"]["accuracy"] == res["dense"]["accuracy"]
    assert curve["4"]["accuracy"] == pytest.approx(res["gated"]["accuracy"])
    # ... whose intermediate points are what a run stopped there scores (rounds re-score the same batches)
    proc = cli(tmp_path / "short", *common, "method.heads=0.25")
    assert proc.returncode == 0, proc.stderr[-3000:]
    short = results(tmp_path / "short")
    assert "curve" not in short
    assert short["gated"]["accuracy"] == pytest.approx(curve["2"]["accuracy"])


def test_random_head_order_control_reuses_one_dense_model_across_order_seeds(tmp_path, shared_data):
    """head_importance=random: the curve's rounds in a seeded random order, no retraining; the order seed is
    apart from the run's seed, so several orders share the seed's one dense fine-tune (stage cache)."""
    common = ("model=tiny-bert", "method.pruner=heads", "method.head_importance=random", "method.heads=0.5",
              "method.head_step=0.125", "method.recovery_epochs=0", "method.head_curve=true",
              f"paths.output_root={tmp_path}")
    for order in (1, 2):
        proc = run_cli(*TINY, "method=prune", *common, f"method.order_seed={order}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    paths = sorted(tmp_path.rglob("results.json"))
    runs = [json.loads(path.read_text()) for path in paths]
    assert len(runs) == 2
    by_order = {r["head_order_seed"]: r for r in runs}
    assert set(by_order) == {1, 2}
    assert sorted((path.parent / "dense").is_symlink() for path in paths) == [False, True]  # fine-tuned once
    assert by_order[1]["removed_heads"] != by_order[2]["removed_heads"]
    for r in runs:
        assert list(r["curve"]) == ["0", "1", "2", "3", "4"]
        assert r["dense"]["accuracy"] == runs[0]["dense"]["accuracy"]  # one dense model under both orders
        assert sum(map(len, r["removed_heads"])) == 4
        assert "train" not in r  # no recovery: test-time removal, as the gradient curve


def test_attattr_head_order_scores_once_and_masks_lowest_first(tmp_path, shared_data):
    """head_importance=attattr: AttAttr scores of the dense model (results.json head_scores), the curve's rounds
    masked lowest score first (one head kept per layer), no retraining."""
    proc = cli(tmp_path, "model=tiny-bert", "method.pruner=heads", "method.head_importance=attattr",
               "method.heads=0.5", "method.head_step=0.125", "method.recovery_epochs=0", "method.head_curve=true",
               "method.attr_examples=12", "method.attr_steps=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = results(tmp_path)
    scores = torch.tensor(r["head_scores"])
    assert scores.shape == (2, 4) and list(r["curve"]) == ["0", "1", "2", "3", "4"]
    masked = {(i, h) for i, hs in enumerate(r["removed_heads"]) for h in hs}
    kept = [scores[i, h] for i in range(2) for h in range(4) if (i, h) not in masked]
    assert len(masked) == 4 and all(scores[i, h] <= max(kept) for i, h in masked)


def test_skill_neurons_end_to_end_keep_predictive_neurons_in_the_chosen_layers(tmp_path, shared_data):
    """pruner=skill: predictivity per neuron, the top share kept in method.ffn_layers only, the removed neurons'
    means folded (the gated and the physically pruned model agree), recovery, speed measured."""
    proc = cli(tmp_path, "model=tiny-bert", "method.pruner=skill", "method.ffn=0.75", "method.ffn_layers=[1]",
               "method.skill_examples=64", "method.recovery_epochs=0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = results(tmp_path)
    width = r["kept_neurons"][0]
    assert r["kept_neurons"] == [width, width // 4] and r["folded_means"] is True
    assert r["gated"]["accuracy"] == r["before_recovery"]["accuracy"]  # folding and removal agree exactly
    assert len(r["predictivity"]) == 2 and all(0.5 <= p["max"] <= 1 for p in r["predictivity"])
    assert r["predictivity"][1]["kept_mean"] >= r["predictivity"][1]["mean"]  # the kept are the predictive ones
    assert r["speed"]["32x128"]["speedup"]["pruned"] > 0 and "train" in r
    proc = run_cli(*[a for a in TINY if not a.startswith("task=")], "task=glue/stsb", "model=tiny-bert",
                   "method=prune", "method.pruner=skill", f"paths.output_root={tmp_path / 'stsb'}")
    assert proc.returncode == 2 and "binary classification" in proc.stderr
    assert len([line for line in proc.stderr.strip().splitlines() if line.strip()]) == 1


def test_dense_epochs_sets_the_dense_stage_apart_from_the_pruning_run(tmp_path, shared_data):
    """method.dense_epochs: the dense fine-tune (KD teacher, % of dense reference) trains its own epochs, so a
    longer pruning run keeps the shorter runs' dense model (the same stage key)."""
    common = ("model=tiny-bert", "method.pruner=magnitude", "method.sparsity=0.5", "method.alpha_kd=0.5")
    short = cli(tmp_path / "short", *common, "train.epochs=0.5")
    assert short.returncode == 0, short.stderr[-3000:]
    longer = cli(tmp_path / "long", *common, "train.epochs=1", "method.dense_epochs=0.5")
    assert longer.returncode == 0, longer.stderr[-3000:]
    done = {name: json.loads(next((tmp_path / name).rglob("dense/done.json")).read_text()) for name in ("short", "long")}
    assert done["long"]["key"]["train"]["epochs"] == 0.5
    assert done["long"]["digest"] == done["short"]["digest"]  # the same dense model as the 0.5-epoch run's
    assert results(tmp_path / "long")["dense"]["accuracy"] == results(tmp_path / "short")["dense"]["accuracy"]


def test_movement_diagnostic_traces_a_tiny_run(tmp_path, shared_data):
    """recipes/movement-pruning/diagnose.py (the README's collapse diagnosis) runs the recipe's fine-pruning with its
    probe and writes one trace line per probe; --summary prints them."""
    script = ROOT / "recipes" / "movement-pruning" / "diagnose.py"
    args = [str(script), "--sparsity", "0.75", "--out", str(tmp_path), "--every", "4", "--probe-size", "16",
            "model=tiny-bert", "task.max_train_samples=128", "task.max_eval_samples=32", "task.max_length=32",
            "train.epochs=1", "train.batch_size=16", "method.alpha_kd=0", f"data_dir={shared_data}"]
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "movement-0.75-seed1" / "trace.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 4, 8]
    assert rows[-1]["level"] == pytest.approx(0.75) and rows[-1]["w_in"]["kept"] == pytest.approx(0.25, abs=0.01)
    assert len(rows[-1]["layers"]) == 2 and 0 <= rows[-1]["pooled_cos"] <= 1.0001
    out = subprocess.run([sys.executable, str(script), "--summary", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "movement-0.75-seed1" in out.stdout
    bad = subprocess.run([sys.executable, str(script), "--summary", str(tmp_path / "none")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --summary")
