"""Quantization (issue 31): the fake-quant blocks and their STE, the deployed int8 models against fp32 and
against the fake-quant model QAT trains, and method=quantize end to end on tiny-bert with one-line refusals."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
import yaml

from runner import speed
from runner.errors import UserError
from runner.models import ModelConfig, load_model
from runner.quant import eager, fake
from tests.conftest import CONF_DIR, TINY_SST2, run_cli
from tests.test_bad_input import error_line


def tiny_bert(labels: int = 3):
    cfg = ModelConfig(**yaml.safe_load((CONF_DIR / "model" / "tiny-bert.yaml").read_text()))
    torch.manual_seed(0)
    return load_model(cfg, "classification", num_labels=labels, problem_type="single_label_classification").eval()


def batch():
    x = speed.inputs(8, 24, 30522, seed=1)
    x["attention_mask"][:, 20:] = 0  # padded rows count in the per-tensor ranges, in both models alike
    return x


def logits(model, x) -> torch.Tensor:
    with torch.no_grad():
        return model(**x).logits


# ---------------------------------------------------------------------------------------------------------
# Blocks


@pytest.mark.parametrize("backend", ["onnxruntime", "onnxruntime-reduced", "torch", "torchao"])
def test_fake_weight_lies_on_the_backends_integer_grid(backend):
    grid = fake.GRIDS[backend]
    w = torch.randn(6, 10)
    q = fake.fake_weight(w, grid, per_channel=True)
    scale = w.abs().amax(dim=1, keepdim=True) / grid.w_divisor
    steps = q / scale
    assert torch.allclose(steps, steps.round(), atol=1e-4)
    assert steps.min() >= grid.w_min - 1e-4 and steps.max() <= grid.w_max + 1e-4
    assert (q - w).abs().max() <= scale.max() / 2 + 1e-6  # rounding error at most half a step


def test_fake_activation_per_tensor_keeps_zero_exact_and_per_token_is_per_row():
    x = torch.tensor([[0.0, 0.3, -1.2, 2.5], [0.0, 0.01, 0.02, -0.03]])
    q = fake.fake_activation(x, fake.GRIDS["onnxruntime"])
    assert q[0, 0] == 0 and q[1, 0] == 0  # zero is on the grid (the range always contains it)
    scale = (2.5 + 1.2) / 255
    assert (q - x).abs().max() <= scale / 2 + 1e-6
    per_token = fake.fake_activation(x, fake.GRIDS["torchao"])
    assert (per_token[1] - x[1]).abs().max() <= 0.03 / 127.5 / 2 + 1e-7  # the small row keeps its own scale


def test_the_straight_through_estimator_passes_gradients_unchanged():
    for grid in fake.GRIDS.values():
        w = torch.randn(5, 7, requires_grad=True)
        fake.fake_weight(w, grid).mul(torch.arange(7.0)).sum().backward()
        assert torch.allclose(w.grad, torch.arange(7.0).expand(5, 7), rtol=1e-6)  # (w / s) * s: float rounding
        a = torch.randn(3, 7, requires_grad=True)
        fake.fake_activation(a, grid).sum().backward()
        assert torch.allclose(a.grad, torch.ones(3, 7), rtol=1e-6)


def test_attach_fake_quantizes_every_linear_and_detach_keeps_the_float_weights():
    model = tiny_bert()
    before = {n: m.weight.detach().clone() for n, m in fake.linears(model).items()}
    x = batch()
    dense = logits(model, x)
    found = fake.attach(model, "torch")
    assert len(found) == 2 * 6 + 2  # q, k, v, o, in, out per layer; pooler; classifier
    assert not torch.equal(logits(model, x), dense)
    fake.detach(found)
    assert all(torch.equal(m.weight, before[n]) for n, m in fake.linears(model).items())
    assert torch.equal(logits(model, x), dense)


# ---------------------------------------------------------------------------------------------------------
# Deployed int8 vs fp32 and vs the fake-quant model (tolerances: logits of a random tiny-bert are ~0.02 in size)


def test_torch_int8_is_close_to_fp32_and_to_its_fake_quant_model():
    model, x = tiny_bert(), batch()
    ref = logits(model, x)
    deployed = eager.dynamic_int8(model)
    assert sum(type(m).__name__ == "Linear" and "dynamic" in type(m).__module__ for m in deployed.modules()) == 14
    got = logits(deployed, x)
    err = (got - ref).abs().max().item()
    assert err < 0.05 * ref.abs().max().item()  # int8 within 5% of the logits' size
    faked = copy.deepcopy(model)
    fake.attach(faked, "torch")
    assert (got - logits(faked, x)).abs().max().item() < 0.35 * err  # fbgemm's own rounding: close, not exact


@pytest.mark.parametrize("reduce_range", [True, False])
def test_onnxruntime_int8_matches_its_fake_quant_model(tmp_path, reduce_range):
    pytest.importorskip("onnxruntime", reason="the quant extra (pip install -e .[quant])")
    from runner.quant import ort

    model, x = tiny_bert(), batch()
    ort.export(model, tmp_path / "fp32.onnx")
    ort.quantize_dynamic(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", True, False, reduce_range)
    fp32 = logits(ort.OrtModel(tmp_path / "fp32.onnx"), x)
    assert (fp32 - logits(model, x)).abs().max() < 1e-5  # the export is exact
    got = logits(ort.OrtModel(tmp_path / "int8.onnx"), x)
    faked = copy.deepcopy(model)
    fake.attach(faked, "onnxruntime", reduce_range=reduce_range)
    if reduce_range or fake.cpu_has_vnni():
        assert (got - logits(faked, x)).abs().max() < 1e-6  # the same integers, the same scales
        assert (got - fp32).abs().max() < 0.05 * fp32.abs().max()
    else:  # full-range weights on an AVX2-only CPU: the int16 pair sums saturate (runner/quant/fake.py)
        assert (got - logits(faked, x)).abs().max() > 1e-3


def test_torchao_backend_without_the_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(UserError, match=r"torchao extra .*pip install -e '\.\[torchao\]'"):
        eager.require_torchao()


def test_onnxruntime_backend_without_the_extra_is_one_line(monkeypatch):
    from runner.quant import ort

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match=r"quant extra .*pip install -e '\.\[quant\]'"):
        ort.require()


# ---------------------------------------------------------------------------------------------------------
# method=quantize


@pytest.mark.parametrize("override,fix", [
    ("method.bits=3", "int8 or int4"),
    ("method.bits=4", "method.backend=torchao method.scheme=weight_only"),
    ("method.scheme=static method.backend=torch", "method.backend=onnxruntime"),
    ("method.qat=true method.scheme=static", "method.scheme=dynamic"),
    ("method.alpha_kd=0.5", "method.qat=true"),
    ("method.backend=int8", "method.backend"),
])
def test_bad_quantize_configs_are_one_line(tmp_path, shared_data, override, fix):
    out = run_cli(*TINY_SST2, "method=quantize", *override.split(), f"data_dir={shared_data}",
                  f"paths.output_root={tmp_path}")
    assert fix in error_line(out)
    assert not list(tmp_path.rglob("results.json"))


def test_ptq_on_onnxruntime_reports_the_deployed_model_its_size_and_speed(tmp_path, shared_data):
    pytest.importorskip("onnxruntime", reason="the quant extra (pip install -e .[quant])")
    out = run_cli(*TINY_SST2, "method=quantize", "method.speed_repeats=1", f"data_dir={shared_data}",
                  f"paths.output_root={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(next(tmp_path.rglob("results.json")).read_text())
    run_dir = next(tmp_path.rglob("results.json")).parent
    assert results["quantized"]["backend"] == "onnxruntime" and results["quantized"]["linears"] == 14
    assert (run_dir / "model" / "model.onnx").exists() and (run_dir / "model" / "quant.json").exists()
    assert results["size_mb"]["int8"] > 0 and results["size_mb"]["fp32"] > 0
    assert set(results["speed"]["32x128"]["ms"]) == {"dense", "fp32_onnxruntime", "int8"}
    assert abs(results["metrics"]["accuracy"] - results["fp32"]["accuracy"]) <= 0.05


def test_qat_with_kd_converts_to_a_model_that_predicts_like_its_fake_quant_model(tmp_path, shared_data):
    out = run_cli(*TINY_SST2, "method=quantize", "method.backend=torch", "method.qat=true", "method.alpha_kd=0.5",
                  "method.speed_repeats=0", f"data_dir={shared_data}", f"paths.output_root={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(next(tmp_path.rglob("results.json")).read_text())
    qat = results["qat"]
    assert qat["agreement"]["same_prediction"] >= 0.95
    assert "'loss_kd'" in out.stdout + out.stderr  # the Trainer's log lines carry the KD term
    assert abs(results["metrics"]["accuracy"] - qat["fake_quant"]["accuracy"]) <= 0.05
