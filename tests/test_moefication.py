"""MoEfication: the MoE FFN against the dense FFN, splits, routers, stage resume and sharing, config errors.

Unit tests build tiny random-init BERT and T5 models in-process; the CLI tests run the whole method on
tiny-bert with a few hundred SST-2 rows.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

from runner.errors import UserError
from runner.models import arch
from runner.moe import collect, module, router, split
from tests.conftest import TINY_SST2, compose, kill_when, run_cli, safe_rglob

VOCAB = 100
TINY = {
    "bert": lambda: tf.BertForSequenceClassification(tf.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=40, initializer_range=0.2, num_labels=2)),
    "t5": lambda: tf.T5ForSequenceClassification(tf.T5Config(
        vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2,
        num_labels=2, eos_token_id=1, pad_token_id=0, decoder_start_token_id=0)),
}


def tiny(family: str):
    torch.manual_seed(0)
    return TINY[family]().eval()


def batch(seq: int = 9) -> dict:
    ids = torch.randint(3, VOCAB, (3, seq), generator=torch.Generator().manual_seed(1))
    ids[:, -1] = 1  # T5ForSequenceClassification pools at </s>
    mask = torch.ones_like(ids)
    ids[0, 5:-1], mask[0, 5:-1] = 0, 0  # a padded row: pad ids are excluded from collection
    return {"input_ids": ids, "attention_mask": mask}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch()).logits


def random_groups(model, size: int = 8) -> dict:
    return {f.name: split.random_split(f.w_in.out_features, f.w_in.out_features // size, f.index)
            for f in arch.ffns(model)}


def moefied(family: str, kind: str, ratio: float):
    model = tiny(family)
    ffns = arch.ffns(model)
    groups = random_groups(model)
    routers = {f.name: router.build(kind, f.w_in.weight, groups[f.name]) for f in ffns}
    module.moefy(model, ffns, groups, routers, ratio)
    return model


# ---------------------------------------------------------------------------------------------------------
# The MoE module and the conversion


@pytest.mark.parametrize("family", ["bert", "t5"])
@torch.no_grad()
def test_moe_ffn_with_every_expert_equals_the_dense_ffn(family):
    model = tiny(family)
    for ffn in arch.ffns(model):  # encoder and (T5) decoder FFNs
        x = torch.randn(2, 7, 32)
        expected = ffn.forward(x)
        groups = split.random_split(64, 8, ffn.index)
        moe = module.to_moe(ffn, groups, router.build("mlp", ffn.w_in.weight, groups), k=8)
        assert (moe(x) - expected).abs().max().item() <= 1e-5
        moe.k = 2  # fewer experts: a different function
        assert (moe(x) - expected).abs().max().item() > 1e-4


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_gt_router_at_ratio_one_reproduces_the_dense_logits(family):
    expected = logits(tiny(family))
    model = moefied(family, "gt", 1.0)
    assert sum(isinstance(m, module.MoEFFN) for m in model.modules()) == (2 if family == "bert" else 4)
    assert (logits(model) - expected).abs().max().item() <= 1e-5
    assert module.set_ratio(model, 0.25)[0] == 2
    assert (logits(model) - expected).abs().max().item() > 1e-6


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_neuron_permutation_leaves_the_dense_function_unchanged(family):
    model = tiny(family)
    expected = logits(model)
    for ffn in arch.ffns(model):
        module.permute_neurons(ffn, torch.randperm(64, generator=torch.Generator().manual_seed(ffn.index)))
    assert torch.allclose(logits(model), expected, atol=1e-5, rtol=0)
    assert not torch.equal(arch.ffns(model)[0].w_in.weight, arch.ffns(tiny(family))[0].w_in.weight)


def test_oracle_routing_keeps_more_than_random_routing():
    """At 25% of experts, the oracle's choice changes the logits less than an arbitrary one."""
    expected = logits(tiny("bert"))
    gt = (logits(moefied("bert", "gt", 0.25)) - expected).abs().mean()
    sim = (logits(moefied("bert", "similarity", 0.25)) - expected).abs().mean()
    assert gt < sim


def test_gated_ffn_is_refused():
    model = tf.T5ForSequenceClassification(tf.T5Config(
        vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=1, num_labels=2,
        feed_forward_proj="gated-gelu"))
    ffn = arch.ffns(model)[0]
    with pytest.raises(UserError, match="gated FFN"):
        module.to_moe(ffn, split.random_split(64, 8, 0), router.GroundTruthRouter(), 2)


# ---------------------------------------------------------------------------------------------------------
# Collection, splits, routers


def test_collect_excludes_padding_and_covers_encoder_and_decoder():
    model = tiny("t5")
    b = batch()
    inputs = collect.collect_inputs(model, arch.ffns(model), [b], max_tokens=10_000)
    real = int(b["attention_mask"].sum())
    assert set(inputs) == {f.name for f in arch.ffns(model)} and len(inputs) == 4
    assert all(x.shape == (real, 32) and x.dtype == collect.STORE_DTYPE for x in inputs.values())
    assert collect.collect_inputs(model, arch.ffns(model), [b, b], max_tokens=5)[arch.ffns(model)[0].name].shape[0] == 5


@pytest.mark.parametrize("kind", split.SPLITS)
def test_every_split_is_balanced(kind):
    model = tiny("bert")
    ffn = arch.ffns(model)[0]
    if kind == "random":
        groups = split.random_split(64, 8, 0)
    elif kind == "param_cluster":
        groups = split.param_cluster(ffn.w_in.weight, 8, seed=0, n_init=1)
    else:
        x = torch.randn(500, 32)
        groups = split.coact_split(split.coactivation(collect.hidden_blocks(ffn, x, block=128)), 8, seed=0)
    assert groups.shape == (8, 8) and split.is_balanced(groups, 64)


def test_balance_evens_out_a_skewed_partition():
    graph = torch.rand(12, 12)
    graph = graph + graph.t()
    labels = split.balance([0] * 9 + [1, 2, 2], graph, 3)
    assert sorted(torch.bincount(torch.as_tensor(labels)).tolist()) == [4, 4, 4]


def test_param_cluster_groups_similar_rows():
    """Rows built as 4 tight clusters come back as the 4 experts."""
    centres = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    rows = centres.repeat_interleave(8, 0) + 0.01 * torch.randn(32, 16)
    perm = torch.randperm(32)
    groups = split.param_cluster(rows[perm], 4, seed=0, n_init=1)
    truth = {frozenset(range(8 * i, 8 * i + 8)) for i in range(4)}
    assert {frozenset(perm[g].tolist()) for g in groups} == truth


def test_mlp_router_training_lowers_its_loss():
    ffn = arch.ffns(tiny("bert"))[0]
    groups = split.param_cluster(ffn.w_in.weight, 8, seed=0, n_init=1)
    x = torch.randn(3000, 32)
    mass = router.expert_mass(ffn.hidden(x).detach(), groups)
    r = router.build("mlp", ffn.w_in.weight, groups)
    history = router.train_mlp(r, x[:2500], mass[:2500], x[2500:], mass[2500:], epochs=8, lr=1e-2,
                               batch_size=256, seed=0)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert min(history["held_out_loss"][1:]) < history["held_out_loss"][0] and history["best_epoch"] > 0
    with torch.no_grad():
        assert 0.5 < router.mass_recall(r(x[2500:]), mass[2500:], 2) <= 1.0
    assert router.mass_recall(mass, mass, 2) == pytest.approx(1.0)


def test_active_experts_rounds_and_keeps_one():
    assert [router.active_experts(48, r) for r in (0.1, 0.2, 0.25, 0.3, 0.5, 1.0)] == [5, 10, 12, 14, 24, 48]
    assert router.active_experts(8, 0.01) == 1 and router.active_experts(4, 0.125) == 1
    assert router.active_experts(8, 0.3125) == 3  # 2.5 rounds up


# ---------------------------------------------------------------------------------------------------------
# Config and model errors: one line each, naming the fix


@pytest.mark.parametrize(("override", "message"), [
    ("method.ratios=[0.2,1.5]", "method.ratios: 1.5 is not in (0, 1]"),
    ("method.ratios=[0]", "method.ratios: 0 is not in (0, 1]"),
    ("method.split=kmeans", "method.split: 'kmeans' is not one of random, param_cluster, coact"),
    ("method.router=oracle", "method.router: 'oracle' is not one of gt, similarity, mlp"),
    ("method.expert_size=0", "method.expert_size must be a positive integer"),
])
def test_config_errors(override, message, tmp_path):
    from runner.run import make_context

    with pytest.raises(UserError) as err:
        make_context(compose(["method=moefication", override]), tmp_path)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize(("override", "message"), [
    ("method.num_experts=7", "method.num_experts=7 does not divide the FFN width 64 of model tiny-bert; use one of 1, 2"),
    ("method.expert_size=48", "method.expert_size=48 does not divide the FFN width 64"),
])
def test_expert_count_must_divide_the_width(override, message, tmp_path):
    from runner.methods.moefication import check_model
    from runner.run import make_context

    ctx = make_context(compose(["method=moefication", "model=tiny-bert", override]), tmp_path)
    with pytest.raises(UserError) as err:
        check_model(ctx, tiny("bert"))
    assert str(err.value).startswith(message)


def test_base_run_must_be_a_completed_run_on_the_same_task(tmp_path):
    from runner.artifacts import finished_run

    def finished_model(ctx, path):
        return finished_run(path, key="method.base_run", task="glue/sst2")

    ctx = None
    with pytest.raises(UserError, match="no readable results.json"):
        finished_model(ctx, str(tmp_path))
    (tmp_path / "results.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(UserError, match="that run is running, not completed"):
        finished_model(ctx, str(tmp_path))
    (tmp_path / "results.json").write_text(json.dumps({"status": "completed",
                                                       "config": {"task": {"name": "glue/mnli"}}}))
    with pytest.raises(UserError, match="trained on task glue/mnli, not glue/sst2"):
        finished_model(ctx, str(tmp_path))


def test_gated_model_is_refused_before_training(tmp_path):
    from runner.methods.moefication import check_model
    from runner.run import make_context

    ctx = make_context(compose(["method=moefication", "model=tiny-t5"]), tmp_path)
    gated = tf.T5ForSequenceClassification(tf.T5Config(
        vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=1, num_labels=2,
        feed_forward_proj="gated-gelu"))
    with pytest.raises(UserError, match="^model tiny-t5 has gated FFNs"):
        check_model(ctx, gated)
    assert check_model(ctx, tiny("t5")) == (2, 32)


def test_cli_error_is_one_line_with_exit_2(tmp_path):
    out = run_cli("method=moefication", "model=tiny-bert", "method.ratios=[0.25,2]", f"paths.output_root={tmp_path}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == (
        "error: method.ratios: 2 is not in (0, 1]; a ratio is the share of experts a token uses, e.g. 0.25")


# ---------------------------------------------------------------------------------------------------------
# End to end on tiny-bert: a run killed after a stage resumes there; a second config shares the stages


ARGS = ["method=moefication", *TINY_SST2, "task.max_train_samples=128", "method.expert_size=8",
        "method.collect_tokens=1500", "method.router_epochs=3", "method.ratios=[0.25,1.0]"]


def test_killed_run_resumes_at_its_first_missing_stage_and_grid_cells_share_stages(tmp_path, shared_data):
    common = [*ARGS, f"data_dir={shared_data}", f"paths.output_root={tmp_path}"]
    kill_when(common, lambda: bool(safe_rglob(tmp_path, "dense/done.json")), "its dense stage was done")
    run_dir = next(tmp_path.rglob("dense/done.json")).parent.parent
    assert json.loads((run_dir / "results.json").read_text())["status"] == "running"
    assert not (run_dir / "eval" / "done.json").exists()
    model_mtime = (run_dir / "dense" / "model" / "model.safetensors").stat().st_mtime

    resumed = run_cli(*common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "stage dense: already done" in log and "stage eval: computing" in log
    r = json.loads((run_dir / "results.json").read_text())
    assert r["status"] == "completed" and r["attempts"] == 2
    assert r["stages"]["dense"]["status"] == "resumed" and r["stages"]["eval"]["status"] == "computed"
    assert (run_dir / "dense" / "model" / "model.safetensors").stat().st_mtime == model_mtime
    assert not (run_dir / "dense" / "checkpoints").exists()
    m = r["metrics"]
    assert {"accuracy", "accuracy@0.25", "accuracy@1.0", "relative@0.25", "recall@0.25"} <= set(m)
    assert r["ratios"]["1.0"]["accuracy"] == m["accuracy"] and r["ratios"]["0.25"]["k"] == 2
    assert r["experts"] == {**r["experts"], "num_experts": 8, "expert_size": 8, "balanced": True}
    assert (run_dir / "moefication.png").stat().st_size > 0
    speed = r["speed"]  # dense vs MoE at every ratio, timed side by side (runner.speed)
    assert speed["reference"] == "dense" and set(speed["32x128"]["ms"]) == {"dense", "moe@0.25", "moe@1.0"}
    assert speed["1x64"]["speedup"]["dense"] == 1.0 and speed["32x128"]["speedup"]["moe@0.25"] > 0

    # another cell of the grid, in-process: the dense model and the collected inputs come from the cache
    from runner import registry
    from runner.run import make_context

    other = tmp_path / "other-cell"
    other.mkdir()
    ctx = make_context(compose([*common, "method.split=random", "method.router=gt"]), other)
    r2 = registry.get("moefication")(ctx)
    assert {k: v["status"] for k, v in r2["stages"].items()} == {
        "dense": "shared", "collect": "shared", "split": "computed", "router": "computed", "eval": "computed",
        "speed": "computed"}
    assert (other / "dense").resolve() == (run_dir / "dense").resolve()
    assert r2["metrics"]["accuracy"] == m["accuracy"]
    assert r2["router"]["recall"]["0.25"] == pytest.approx(1.0)


def test_base_run_reuses_a_finished_finetune_model(tmp_path, shared_data):
    """method.base_run: no fine-tuning; dense/model links the base run's model (in-process, a tiny model)."""
    from runner import registry
    from runner.run import make_context

    base = tmp_path / "finetune-run"
    overrides = [*ARGS, "method.split=random", "method.router=similarity", f"data_dir={shared_data}",
                 f"paths.output_root={tmp_path}", f"method.base_run={base}"]
    ctx = make_context(compose(overrides), tmp_path / "moe-run")
    ctx.new_model().save_pretrained(base / "model")
    (base / "results.json").write_text(json.dumps({"status": "completed",
                                                   "config": {"task": {"name": "glue/sst2"}}}))
    ctx.run_dir.mkdir()
    result = registry.get("moefication")(ctx)
    assert (ctx.run_dir / "dense" / "model").resolve() == (base / "model").resolve()
    assert not (ctx.run_dir / "dense" / "checkpoints").exists()
    assert result["stages"]["dense"]["status"] == "computed" and "accuracy@0.25" in result["metrics"]


@pytest.mark.slow
def test_bench_moe_quick_layer_runs(tmp_path):
    out = run_cli("moe", "--only", "layer", "--sizes", "384", "--ratios", "0.25,1.0", "--repeats", "1",
                  "--out", str(tmp_path), module="runner.bench")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "384 |" in out.stdout and (tmp_path / "moe.png").exists()
    data = json.loads((tmp_path / "moe.json").read_text())
    assert set(data["seconds"]["layer"]["32x128"]) == {"dense", "m384@0.25", "m384@1.0"}


def test_stages_resume_share_and_recompute_on_a_new_key(tmp_path):
    from runner.stages import DONE, Stages

    calls = []

    def build(path):
        calls.append(path)
        (path / "artefact.txt").write_text("x")
        return {"n": len(calls)}

    a = Stages(tmp_path / "run-a", tmp_path / "cache", lambda msg: None, "moefication")
    first = a.run("dense", {"lr": 1}, build, share=True)
    assert first.reused == "computed" and first.info["n"] == 1
    # a run killed between done.json and the cache registration: the resume registers it
    next((tmp_path / "cache" / "moefication").glob("dense-*")).unlink()
    assert a.run("dense", {"lr": 1}, build, share=True).reused == "resumed" and len(calls) == 1
    b = Stages(tmp_path / "run-b", tmp_path / "cache", lambda msg: None, "moefication")
    shared = b.run("dense", {"lr": 1}, build, share=True)
    assert shared.reused == "shared" and shared.info["n"] == 1 and len(calls) == 1
    assert (tmp_path / "run-b" / "dense").resolve() == (tmp_path / "run-a" / "dense").resolve()
    # a new key recomputes and keeps the old artefacts aside
    again = a.run("dense", {"lr": 2}, build, share=True)
    assert again.reused == "computed" and len(calls) == 2 and (tmp_path / "run-a" / "dense" / DONE).exists()
    assert len(list((tmp_path / "run-a").glob("dense.old-*"))) == 1


def test_shared_stages_survive_moving_the_output_tree(tmp_path):
    """Stage links are relative: an outputs folder moved or copied whole keeps its shared stages."""
    import shutil

    from runner.stages import Stages

    def build(path):
        (path / "artefact.txt").write_text("x")
        return {}

    old = tmp_path / "old"
    Stages(old / "run-a", old / "cache", lambda msg: None, "moefication").run("dense", {"lr": 1}, build, share=True)
    Stages(old / "run-b", old / "cache", lambda msg: None, "moefication").run("dense", {"lr": 1}, build, share=True)
    shutil.move(old, tmp_path / "new")
    new = tmp_path / "new"
    assert (new / "run-b" / "dense" / "artefact.txt").read_text() == "x"
    c = Stages(new / "run-c", new / "cache", lambda msg: None, "moefication").run("dense", {"lr": 1}, build, share=True)
    assert c.reused == "shared" and c.path.resolve() == (new / "run-a" / "dense").resolve()
