"""What a quantized run leaves in <run dir>/model, and how it is loaded back.

    model/              the float weights the int8 model was made from (after QAT, if any), with the
                        tokenizer and, for a structurally pruned model, its pruning plan: a normal model dir
    model/model.onnx    onnxruntime: the int8 graph that was evaluated and timed
    model/int8.pt       torch / torchao: the int8 module's state dict (its size is the artefact's size)
    model/quant.json    backend, scheme, bits, per_channel, artefact: how to rebuild the deployed model

`load(model_dir, float_model)` returns the deployed model: an OrtModel session, or the float model
quantized again (dynamic quantization is a pure function of the weights, so it is the same int8 model).
`load_deployed(ctx, model_dir)` loads what any finished run deploys (plain, pruned, MoEfied, int8).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

QUANT_FILE = "quant.json"


def is_quantized(model_dir: Path) -> bool:
    return (Path(model_dir) / QUANT_FILE).exists()


def spec(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / QUANT_FILE).read_text())


def write_spec(model_dir: Path, **values) -> dict:
    (Path(model_dir) / QUANT_FILE).write_text(json.dumps(values, indent=1))
    return values


def convert(float_model: nn.Module, backend: str, scheme: str, bits: int, per_channel: bool) -> nn.Module:
    """The deployed torch int8 module for the torch backends (onnxruntime converts through files: ort.py)."""
    from runner.quant import eager

    if backend == "torch":
        return eager.dynamic_int8(float_model, per_channel)
    return eager.torchao_int8(float_model, scheme, bits)


def load(model_dir: Path, float_model: nn.Module) -> nn.Module:
    """The deployed model saved in `model_dir`, given its float model (load_model_dir of the same dir)."""
    model_dir = Path(model_dir)
    s = spec(model_dir)
    if s["backend"] == "onnxruntime":
        from runner.quant import ort

        ort.require()
        return ort.OrtModel(model_dir / s["artefact"])
    return convert(float_model, s["backend"], s["scheme"], s["bits"], s["per_channel"])


def load_deployed(ctx, model_dir: Path) -> nn.Module:
    """The model a finished run deploys, whatever made it: a plain or structurally pruned model (its pruning
    plan), a MoEfied model (moe.json: runner.moe.saved), an int8 model (quant.json), or a MoEfied model
    quantized in torch. Eval mode."""
    from runner.artifacts import load_model_dir
    from runner.moe import saved

    model_dir = Path(model_dir)
    model = load_model_dir(ctx, model_dir)
    if saved.is_moe(model_dir):
        model = saved.load(model_dir, model)
    if is_quantized(model_dir):  # after the MoE files: a MoEfied model quantized in torch
        model = load(model_dir, model)
    return model.eval()
