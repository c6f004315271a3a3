"""int8 in torch itself, two libraries:

    torch    torch.ao.quantization.quantize_dynamic: every Linear becomes a dynamic int8 Linear (int8 weights,
             per output channel or per matrix; inputs quantized to uint8 per call) on fbgemm's x86 kernels.
             torch.ao.quantization is deprecated in favour of torchao, but it is what runs int8 fast on a
             CPU today (the README's backend table).
    torchao  torchao.quantization.quantize_: dynamic int8 (per-token activations, per-channel weights) or
             weight-only int8 / int4. Its int8 kernels target GPUs; on this project's CPU the dynamic path
             measured ~20x slower than fp32, also under torch.compile (recipes/bmcook/README.md), so it is for
             CUDA runs and its own extra (`.[torchao]`), not installed by make setup.
"""

from __future__ import annotations

import copy
import logging
import warnings

import torch
from torch import nn

from runner.errors import UserError

EXTRA_HINT = "pip install -e '.[torchao]' (a GPU extra: make setup leaves it out)"


def dynamic_int8(model: nn.Module, per_channel: bool = True) -> nn.Module:
    """A copy of `model` with its Linears (runner.quant.fake.linears: not a MoE router's) swapped for torch's
    dynamic int8 Linear (CPU)."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    from runner.quant.fake import linears

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    model = copy.deepcopy(model).eval().cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice of torch.ao.quantization: see the docstring
        return quantize_dynamic(model, dict.fromkeys(linears(model), qconfig), dtype=torch.qint8)


def require_torchao():
    try:
        logging.getLogger("torchao").setLevel(logging.ERROR)  # its optional CUDA extensions fail to load on CPU
        import torchao.quantization as tq
    except ImportError:
        raise UserError(f"method.backend=torchao needs the torchao extra (torchao is not installed): {EXTRA_HINT}") from None
    return tq


def torchao_int8(model: nn.Module, scheme: str, bits: int) -> nn.Module:
    """A copy of `model` quantized by torchao: scheme dynamic (int8 x int8) or weight_only (int8 / int4)."""
    tq = require_torchao()
    if scheme == "dynamic":
        config = tq.Int8DynamicActivationInt8WeightConfig()
    elif bits == 8:
        config = tq.Int8WeightOnlyConfig()
    else:
        config = tq.Int4WeightOnlyConfig()
    model = copy.deepcopy(model).eval()
    tq.quantize_(model, config)
    return model
