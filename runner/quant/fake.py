"""Fake quantization for quantization-aware training (QAT), as BMCook trains its int8 models: every Linear
computes with its input and weight rounded to the integer grid the deployed kernel will use, and the
straight-through estimator (STE) passes the gradient through the rounding as if it were the identity.

The grid is the deployment backend's, not a generic one, so that the model trained here is the model that
runs (QAT's converted model predicts like its fake-quant model; tests/test_quant.py checks it):

    backend       weights (symmetric, zero point 0)          activations (dynamic, from each call's values)
    onnxruntime   int8 in [-127, 127], scale absmax / 127     uint8 per tensor, range [min(x, 0), max(x, 0)]
      reduced     int8 in [-64, 64], scale absmax / 64        (the same)
    torch         int8 in [-128, 127], scale absmax / 127.5   uint8 per tensor, 7 bits (fbgemm's reduce_range)
    torchao       int8 in [-128, 127], scale absmax / 127.5   int8 per token, symmetric, absmax / 127.5

Why "reduced": on x86 CPUs without VNNI (AVX2 only, as this project's CPU), ONNX Runtime multiplies uint8
activations by int8 weights with VPMADDUBSW, which adds two products into a saturating int16: with full-range
weights the sums overflow and the outputs are wrong, not merely rounded (a single Linear was off by 0.67 on
values of size ~0.5 here). ORT's advice is 7-bit weights (reduce_range), which keeps every pair sum in range;
fbgemm avoids the same overflow with 7-bit activations instead.

(`per_channel`: one weight scale per output row, else one per matrix.) Weight scales are computed from the
current weights at every forward; the gradient of the whole rounding, scales included, is the identity
(the straight-through estimator). The Linears stay nn.Linear: the weight is a
torch parametrization (removed by `detach`, which leaves the trained float weights) and the input goes
through a forward pre-hook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize


@dataclass(frozen=True)
class Grid:
    """An integer scheme: weights in [w_min, w_max] with scale absmax / w_divisor; activations either per
    tensor, asymmetric unsigned with `act_levels` levels, or per token, symmetric int8."""

    w_min: int
    w_max: int
    w_divisor: float
    act_levels: int = 256
    per_token: bool = False


GRIDS = {
    "onnxruntime": Grid(-127, 127, 127.0, act_levels=256),
    "onnxruntime-reduced": Grid(-64, 64, 64.0, act_levels=256),  # 7-bit weights (ORT's reduce_range)
    "torch": Grid(-128, 127, 127.5, act_levels=128),  # fbgemm's dynamic Linear quantizes inputs to 7 bits
    "torchao": Grid(-128, 127, 127.5, per_token=True),
}


def grid(backend: str, reduce_range: bool = False) -> Grid:
    return GRIDS["onnxruntime-reduced" if backend == "onnxruntime" and reduce_range else backend]


def cpu_has_vnni() -> bool:
    """Whether this CPU has the VNNI int8 dot product (AVX512-VNNI or AVX-VNNI): Linux's cpuinfo flags."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def straight_through(x: Tensor, quantized: Tensor) -> Tensor:
    """`quantized` forward, the identity backward (BMCook's STE: no gradient is lost to rounding or to the
    clipping of the largest weight, which absmax / 127.5 rounds onto 128)."""
    return x + (quantized - x).detach()


@torch.no_grad()
def quantize_weight(w: Tensor, grid: Grid, per_channel: bool = True) -> Tensor:
    absmax = w.abs().amax(dim=1, keepdim=True) if per_channel else w.abs().amax()
    scale = (absmax / grid.w_divisor).clamp_min(torch.finfo(w.dtype).tiny)
    return torch.clamp(torch.round(w / scale), grid.w_min, grid.w_max) * scale


@torch.no_grad()
def quantize_activation(x: Tensor, grid: Grid) -> Tensor:
    if grid.per_token:
        scale = (x.abs().amax(dim=-1, keepdim=True) / 127.5).clamp_min(torch.finfo(x.dtype).tiny)
        return torch.clamp(torch.round(x / scale), -128, 127) * scale
    top = grid.act_levels - 1
    lo, hi = x.min().clamp(max=0.0), x.max().clamp(min=0.0)
    scale = ((hi - lo) / top).clamp_min(torch.finfo(x.dtype).tiny)
    zero = torch.clamp(torch.round(-lo / scale), 0, top)
    return (torch.clamp(torch.round(x / scale) + zero, 0, top) - zero) * scale


def fake_weight(w: Tensor, grid: Grid, per_channel: bool = True) -> Tensor:
    return straight_through(w, quantize_weight(w, grid, per_channel))


def fake_activation(x: Tensor, grid: Grid) -> Tensor:
    return straight_through(x, quantize_activation(x, grid))


class FakeQuantWeight(nn.Module):
    """The parametrization W -> fake_weight(W)."""

    def __init__(self, grid: Grid, per_channel: bool):
        super().__init__()
        self.grid, self.per_channel = grid, per_channel

    def forward(self, w: Tensor) -> Tensor:
        return fake_weight(w, self.grid, self.per_channel)


def linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every Linear of the model (encoder, pooler, classifier): what the int8 backends quantize. A MoEfied
    model's routers stay float (the MoE FFN reads their weights directly)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and ".router." not in f".{name}."}


def attach(model: nn.Module, backend: str, per_channel: bool = True, reduce_range: bool = False) -> dict[str, nn.Linear]:
    """Fake-quantize the inputs and weights of every Linear in `backend`'s grid; returns them."""
    chosen = grid(backend, reduce_range)
    found = linears(model)
    for module in found.values():
        parametrize.register_parametrization(module, "weight", FakeQuantWeight(chosen, per_channel))
        module._fake_quant_hook = module.register_forward_pre_hook(
            lambda _, args, g=chosen: (fake_activation(args[0], g), *args[1:]))
    return found


def detach(modules: dict[str, nn.Linear]) -> None:
    """Remove the fake quantization, keeping the trained float weights (what the converter quantizes)."""
    for module in modules.values():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        hook = getattr(module, "_fake_quant_hook", None)
        if hook is not None:
            hook.remove()
            del module._fake_quant_hook
