"""The shared blocks methods build on: teacher slot, artifacts, the training seam (loss state, gradient
accumulation, no-decay groups), MLM evaluation, the speed block and the results contract."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import pytest
import torch

from tests.conftest import CONF_DIR, ROOT, TINY_SST2, compose, run_cli

MODEL_OPTIONS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def tiny_ctx(tmp_path, data, *extra):
    from runner.run import make_context

    cfg = compose([*TINY_SST2, f"data_dir={data}", f"paths.output_root={tmp_path}", *extra])
    return make_context(cfg, tmp_path / "run")


# -- teacher slot -------------------------------------------------------------------------------------------


def test_teacher_group_offers_every_model_option():
    from runner.run import make_context

    assert sorted(p.stem for p in (CONF_DIR / "teacher").glob("*.yaml")) == sorted([*MODEL_OPTIONS, "none"])
    assert make_context(compose([]), ROOT / "unused").teacher_cfg is None
    for name in MODEL_OPTIONS:
        cfg = compose([f"teacher={name}", "model=tiny-bert"])
        assert dict(cfg.teacher) == dict(compose([f"model={name}"]).model)
        ctx = make_context(cfg, ROOT / "unused")
        assert ctx.teacher_cfg.name == name and ctx.model_cfg.name == "tiny-bert"


def test_teacher_from_a_finished_run_and_from_a_model_option(tmp_path, shared_data):
    from runner.artifacts import finished_run, load_model_dir, run_model_config
    from runner.evaluation import evaluate

    out = run_cli(*TINY_SST2, f"data_dir={shared_data}", f"paths.output_root={tmp_path}")
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = next(tmp_path.rglob("results.json")).parent
    results = json.loads((run_dir / "results.json").read_text())

    ctx = tiny_ctx(tmp_path, shared_data, "teacher=tiny-electra")
    model_dir = finished_run(str(run_dir), key="method.teacher_run", task="glue/sst2")
    teacher = load_model_dir(ctx, model_dir, model_cfg=run_model_config(model_dir))
    assert not teacher.training
    assert evaluate(ctx, teacher)["accuracy"] == pytest.approx(results["metrics"]["accuracy"])
    with pytest.raises(Exception, match="trained on task glue/sst2, not glue/rte"):
        finished_run(str(run_dir), key="method.teacher_run", task="glue/rte")

    option = ctx.new_model(model_cfg=ctx.teacher_cfg)  # the `teacher` group's model, with the task's head
    assert type(option).__name__ == "ElectraForSequenceClassification" and option.config.num_labels == 2


def test_student_config_derived_from_the_teacher():
    from runner.config import build, to_dict
    from runner.models import ModelConfig, derive_config, load_model

    teacher = build(ModelConfig, to_dict(compose(["model=tiny-bert"]).model), "model")
    student = derive_config(teacher, "tiny-bert-1l", num_hidden_layers=1, hidden_size=16, intermediate_size=32)
    model = load_model(student, "classification", num_labels=2, problem_type="single_label_classification")
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 16
    assert student.tokenizer == teacher.tokenizer and student.architecture["num_attention_heads"] == 4
    with pytest.raises(Exception, match="no architecture key"):
        derive_config(teacher, "x", num_layerz=1)


# -- the training seam --------------------------------------------------------------------------------------


def test_method_loss_gets_the_step_and_logs_its_terms(tmp_path, shared_data):
    from runner.train import fit

    ctx = tiny_ctx(tmp_path, shared_data, "train.max_steps=6", "train.logging_steps=2", "train.save_steps=100")
    model = ctx.new_model()
    seen = []

    def loss_fn(model, inputs, teacher, state):
        out = model(**inputs)
        seen.append((state.step, state.max_steps, int(state.num_items_in_batch), state.progress))
        state.log(ce=out.loss, double=2 * out.loss.detach())
        return out.loss, out

    result = fit(ctx, model, loss_fn=loss_fn)
    assert [s[0] for s in seen] == [0, 1, 2, 3, 4, 5] and {s[1] for s in seen} == {6}
    assert {s[2] for s in seen} == {16} and seen[3][3] == pytest.approx(0.5)
    logged = [h for h in json.loads(next((tmp_path / "run").rglob("trainer_state.json")).read_text())["log_history"]
              if "loss" in h]
    assert len(logged) == 3 and result["steps"] == 6
    for entry in logged:
        assert entry["loss_double"] == pytest.approx(2 * entry["loss_ce"], rel=1e-5)
        assert entry["loss"] == pytest.approx(entry["loss_ce"], rel=1e-4)


def test_gradient_accumulation_is_scaled_like_one_large_batch(tmp_path, shared_data):
    """Two micro-batches of 8 must give the loss (and so the gradient) of one batch of 16, not twice it."""
    from runner.train import fit

    no_dropout = ["+model.architecture.hidden_dropout_prob=0.0", "+model.architecture.attention_probs_dropout_prob=0.0"]
    losses = {}
    for accum, batch in ((1, 16), (2, 8)):
        ctx = tiny_ctx(tmp_path / f"ga{accum}", shared_data, *no_dropout, "train.max_steps=4", "train.lr=1e-12",
                       "train.logging_steps=4", "train.save_steps=100", f"train.batch_size={batch}",
                       f"train.grad_accum={accum}", "train.eval_every=no")
        fit(ctx, ctx.new_model())
        state = json.loads(next((tmp_path / f"ga{accum}").rglob("trainer_state.json")).read_text())
        losses[accum] = next(h["loss"] for h in state["log_history"] if "loss" in h)
    assert losses[2] == pytest.approx(losses[1], rel=1e-3)


def test_parameter_groups_exempt_biases_and_layernorms_from_weight_decay():
    from runner.models import load_model
    from runner.run import make_context
    from runner.train import decay_groups

    for option in ("tiny-bert", "tiny-t5"):
        ctx = make_context(compose([f"model={option}"]), ROOT / "unused")
        model = load_model(ctx.model_cfg, "classification", num_labels=2, problem_type="single_label_classification")
        names = {id(p): n for n, p in model.named_parameters()}
        head = [p for n, p in model.named_parameters() if "classifier" in n or "classification_head" in n]
        groups = decay_groups(model, [{"params": list(model.parameters())}, {"params": head, "weight_decay": 0.5}])
        decayed = {names[id(p)] for g in groups if g.get("weight_decay") is None for p in g["params"]}
        exempt = {names[id(p)] for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]}
        assert groups[-1]["weight_decay"] == 0.5 and len(groups) == 3  # a group with its own decay is kept
        assert exempt and all("bias" in n or "layernorm" in n.lower() or "layer_norm" in n for n in exempt)
        assert all(not n.endswith("bias") and "layernorm" not in n.lower() for n in decayed)
        assert any(n.endswith("LayerNorm.weight") or n.endswith("layer_norm.weight") for n in exempt)


# -- masked LM ----------------------------------------------------------------------------------------------


def test_mlm_training_lowers_validation_perplexity(tmp_path, shared_data):
    from runner.evaluation import evaluate
    from runner.run import make_context
    from runner.train import fit

    cfg = compose(["model=tiny-bert", "task=pretrain/wikitext", f"data_dir={shared_data}",
                   f"paths.output_root={tmp_path}", "task.max_length=64", "task.max_train_samples=1500",
                   "task.max_eval_samples=80", "train.max_steps=60", "train.lr=2e-3", "train.batch_size=16",
                   "train.eval_every=no", "train.save_steps=1000"])
    ctx = make_context(cfg, tmp_path / "run")
    model = ctx.new_model()
    before = evaluate(ctx, model)
    again = evaluate(ctx, model)  # the masked tokens are fixed, so scores are comparable
    assert (again["loss"], again["masked_tokens"]) == (before["loss"], before["masked_tokens"])
    result = fit(ctx, model)
    after = evaluate(ctx, model)
    assert before["masked_tokens"] == after["masked_tokens"] > 50
    assert after["perplexity"] < 0.5 * before["perplexity"]
    assert after["perplexity"] == pytest.approx(math.exp(after["loss"]))
    assert result["last"]["perplexity"] > 0


def test_pretrain_bbc_splits_documents_deterministically():
    from runner import tasks

    cfg = compose(["task=pretrain/bbc"]).task
    a, b = tasks.load(cfg, None, seed=1), tasks.load(cfg, None, seed=2)
    assert a.is_mlm and len(a.validation) == len(b.validation) > 100
    assert a.validation["text"] == b.validation["text"]
    assert not set(a.validation["text"]) & set(a.train["text"])


# -- speed block --------------------------------------------------------------------------------------------


def test_speed_block_times_models_side_by_side():
    from runner.config import build, to_dict
    from runner.models import ModelConfig, derive_config, load_model
    from runner.speed import measure

    teacher = build(ModelConfig, to_dict(compose(["model=tiny-bert"]).model), "model")
    small = derive_config(teacher, "tiny-bert-1l", num_hidden_layers=1)
    models = {n: load_model(c, "classification", num_labels=2, problem_type="single_label_classification")
              for n, c in (("teacher", teacher), ("student", small))}
    calls = []
    result = measure(models, reference="teacher", vocab_size=100, shapes=((1, 8), (4, 16)), repeats=2,
                     prepare={"student": lambda: calls.append(1)}, min_seconds=0.001)
    assert set(result) >= {"1x8", "4x16", "reference", "repeats", "threads"}
    for shape in ("1x8", "4x16"):
        row = result[shape]
        assert row["speedup"]["teacher"] == 1.0 and row["ms"]["student"] > 0
        assert row["speedup"]["student"] == pytest.approx(row["ms"]["teacher"] / row["ms"]["student"], rel=0.01)
    assert len(calls) == 2 * 3  # prepare before every timed call: warm-up + 2 repeats, per shape
    with pytest.raises(ValueError, match="reference"):
        measure(models, reference="dense", vocab_size=100)


def test_interleaved_timer_statistic_clock_and_calls():
    """runner.speed.interleaved, the one timer every benchmark uses: min or median of the repetitions, wall or
    CPU clock, a fixed number of calls per sample; the first repetition is an untimed warm-up."""
    import time

    from runner.speed import interleaved

    def sleeper(durations):
        it = iter(durations)
        return lambda: time.sleep(next(it))

    def nothing():
        pass

    naps = [0.0, 0.05, 0.001, 0.02]  # warm-up, then three timed samples
    low = interleaved({"a": (nothing, sleeper(naps))}, 3, calls=1)["a"]
    middle = interleaved({"a": (nothing, sleeper(naps))}, 3, calls=1, statistic="median")["a"]
    assert 0.001 <= low < 0.015 and 0.02 <= middle < 0.05
    assert interleaved({"a": (nothing, sleeper([0.02] * 4))}, 3, calls=1, clock="cpu")["a"] < 0.01  # sleep: no CPU
    calls = []
    interleaved({"a": (nothing, lambda: calls.append(1))}, 2, calls=3)
    assert len(calls) == 3 * 3
    with pytest.raises(ValueError, match="statistic"):
        interleaved({"a": (nothing, nothing)}, 1, statistic="mean")
    with pytest.raises(ValueError, match="clock"):
        interleaved({"a": (nothing, nothing)}, 1, clock="gpu")


def test_speed_block_times_t5_models():
    """Encoder-decoder models get their decoder input: T5 classifiers one </s> per row (they pool the decoder
    state there), T5 backbones and generators one decoding step from the decoder start token."""
    import transformers as tf

    from runner.config import build, to_dict
    from runner.models import ModelConfig, arch, load_model
    from runner.speed import inputs, measure, model_inputs

    option = build(ModelConfig, to_dict(compose(["model=tiny-t5"]).model), "model")
    dense = load_model(option, "classification", num_labels=2, problem_type="single_label_classification")
    pruned = copy.deepcopy(dense)
    arch.prune_ffn(pruned, {0: list(range(32)), 1: list(range(32))})  # half of each encoder FFN
    assert arch.layer_sizes(pruned)["ffn"] == [32, 32]
    backbone = load_model(option, "base")
    generator = tf.T5ForConditionalGeneration(copy.deepcopy(dense.config))
    models = {"dense": dense, "pruned": pruned, "backbone": backbone, "generator": generator}
    result = measure(models, reference="dense", vocab_size=30522,
                     shapes=((1, 8), (4, 16)), repeats=1, min_seconds=0.001)
    for shape in ("1x8", "4x16"):
        assert set(result[shape]["ms"]) == set(models) and all(ms > 0 for ms in result[shape]["ms"].values())

    x = inputs(3, 10, 30522)
    x["input_ids"][0, 2] = dense.config.eos_token_id  # a random </s> mid-row would give row 0 two of them
    batch = model_inputs(dense, x)
    assert (batch["input_ids"] == dense.config.eos_token_id).sum(1).tolist() == [1, 1, 1]
    assert (batch["input_ids"][:, -1] == dense.config.eos_token_id).all() and "decoder_input_ids" not in batch
    assert x["input_ids"][0, 2] == dense.config.eos_token_id  # the shared batch is left as it was
    step = model_inputs(generator, x)
    assert step["decoder_input_ids"].tolist() == [[dense.config.decoder_start_token_id]] * 3
    assert step["input_ids"] is x["input_ids"]
    bert = load_model(build(ModelConfig, to_dict(compose(["model=tiny-bert"]).model), "model"), "base")
    assert model_inputs(bert, x) is x


# -- results contract ---------------------------------------------------------------------------------------


def test_reserved_result_keys_fail_the_run_cleanly(tmp_path):
    """A method returning a key the run directory owns fails with one line; results.json says failed."""
    script = (
        "import sys\n"
        "from runner import registry\n"
        "registry.METHODS['finetune'] = 'tests.test_toolkit:method_returning_status'\n"
        "import runpy\n"
        f"sys.argv = ['runner', 'model=tiny-bert', 'paths.output_root={tmp_path}']\n"
        "runpy.run_module('runner', run_name='__main__', alter_sys=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("error: the method's results use reserved or duplicate")
    results = json.loads(next(tmp_path.rglob("results.json")).read_text())
    assert results["status"] == "failed" and "status" in results["error"]


def method_returning_status(ctx):
    ctx.info["parameters"] = {"total": 1}
    return {"metrics": {"accuracy": 1.0}, "status": "great", "parameters": 3}




def test_check_result_separates_metrics_and_refuses_clashes():
    from runner.errors import UserError
    from runner.run import check_result

    metrics, extra = check_result({"metrics": {"a": 1.0}, "plot": "x.png"}, {"speed": {}})
    assert metrics == {"a": 1.0} and extra == {"plot": "x.png", "speed": {}}
    for bad in ({"config": 1}, {"speed": 2}):
        with pytest.raises(UserError):
            check_result(bad, {"speed": {}})
    with pytest.raises(UserError, match="not a dict"):
        check_result([1], {})


Config = __import__("runner.methods.finetune", fromlist=["Config"]).Config  # for the registry patch above


def test_teacher_tensor_never_in_student_checkpoint(tmp_path, shared_data):
    from runner.train import fit

    ctx = tiny_ctx(tmp_path, shared_data, "train.max_steps=2", "train.save_steps=2", "teacher=tiny-bert")
    student, teacher = ctx.new_model(), ctx.new_model(model_cfg=ctx.teacher_cfg)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}

    def loss_fn(model, inputs, teacher, state):
        with torch.no_grad():
            target = teacher(**inputs).logits
        out = model(**inputs)
        return out.loss + ((out.logits - target) ** 2).mean(), out

    fit(ctx, student, loss_fn=loss_fn, teacher=teacher)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    checkpoint = next((tmp_path / "run").rglob("checkpoint-2"))
    from safetensors.torch import load_file

    saved = load_file(checkpoint / "model.safetensors")
    assert set(saved) <= set(student.state_dict()) and len(saved) == len(student.state_dict())


def test_peak_memory_sees_a_block_allocated_and_freed_inside():
    import time

    from runner.memory import PeakMemory, resident_bytes

    if resident_bytes() is None:
        pytest.skip("no /proc: resident set not measurable here")
    # an earlier job's block, freed: the allocator may keep its pages, the next measurement must not hide in them
    for _ in range(3):
        block = torch.ones(64 * 2**20 // 4)
        del block
    with PeakMemory("cpu", interval=0.005) as peak:
        block = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
        time.sleep(0.1)
        del block
    r = peak.result()
    assert r["what"] == "cpu resident set"
    assert r["increase_mb"] >= 50, r  # the sampler caught the block although it was freed before the end
    assert r["peak_mb"] >= r["start_mb"] + r["increase_mb"] - 0.2
