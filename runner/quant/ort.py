"""ONNX Runtime deployment: export a classifier to ONNX, quantize it to int8, and run it through an
InferenceSession that looks like a torch model (OrtModel), so runner.evaluation scores it and runner.speed
times it beside the torch model on the same batches.

    export     torch.onnx (the TorchScript exporter: a plain graph that ORT's optimizer and quantizer read),
               eager attention (the fused attention pattern ORT knows), dynamic batch and sequence axes
    fuse       optional: onnxruntime.transformers' optimizer fuses attention, LayerNorm and GELU
    quantize   dynamic: int8 weights (per output channel), uint8 activations quantized per call (the grid of
               runner.quant.fake's "onnxruntime" scheme); static: QDQ with activation ranges calibrated on
               training batches. Only MatMuls with a constant weight are quantized (the Linears). On a CPU
               without VNNI the weights take 7 bits (reduce_range; runner.quant.fake explains the overflow).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from runner.errors import UserError

EXTRA_HINT = "pip install -e '.[quant]' (make setup installs it)"


def require() -> None:
    """One line naming the extra when ONNX Runtime or onnx is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise UserError(f"method.backend=onnxruntime needs the quant extra ({e.name} is not installed): "
                        f"{EXTRA_HINT}") from None


def input_names(model: nn.Module) -> list[str]:
    """The inputs the exported graph takes: ids, mask, and token types where the family has them."""
    names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 0) > 1:
        names.append("token_type_ids")
    return names


def export(model: nn.Module, path: Path, opset: int = 17) -> Path:
    """Write `model` (a sequence classifier, eval mode, CPU) to `path` as ONNX with dynamic batch/length."""
    from runner.models import arch

    if arch.family(model) == "t5":
        raise UserError("method.backend=onnxruntime exports encoder classifiers; T5 is an encoder-decoder: "
                        "use method.backend=torch")
    model = copy.deepcopy(model).eval().cpu()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")  # the attention pattern ORT's optimizer fuses
    names = input_names(model)
    example = {"input_ids": torch.ones(2, 8, dtype=torch.long), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    if "token_type_ids" in names:
        example["token_type_ids"] = torch.zeros(2, 8, dtype=torch.long)
    axes = {n: {0: "batch", 1: "length"} for n in names} | {"logits": {0: "batch"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), quiet():
        torch.onnx.export(model, (), str(path), kwargs=example, input_names=names, output_names=["logits"],
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    return path


def fuse(source: Path, target: Path, model: nn.Module) -> dict:
    """ORT's transformer optimizer (attention, LayerNorm, GELU fusion); returns the fused-operator counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    from runner.models import arch

    heads = arch.attentions(model, kind="self")[0].num_heads
    with quiet():
        optimized = optimize_model(str(source), model_type="bert", num_heads=heads,
                                   hidden_size=arch.hidden_size(model), opt_level=1)
    optimized.save_model_to_file(str(target))
    return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}


def quantize_dynamic(source: Path, target: Path, per_channel: bool, embeddings: bool, reduce_range: bool) -> Path:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_dynamic

    ops = ["MatMul", "Gemm", "Attention"] + (["Gather"] if embeddings else [])
    with quiet():
        ort_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel,
                    reduce_range=reduce_range, op_types_to_quantize=ops,
                    extra_options={"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT})
    return target


@contextlib.contextmanager
def quiet():
    """ORT's quantizer logs every tensor it skips on the root logger, and the exporter warns about traced
    Python conditionals that do not depend on the data: both stay off the console."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


class Calibration:
    """ORT's CalibrationDataReader over a list of input batches (dicts of torch tensors)."""

    def __init__(self, batches: list[dict], names: list[str]):
        self.feeds = iter([{n: b[n].numpy() for n in names if n in b} for b in batches])

    def get_next(self):
        return next(self.feeds, None)


def quantize_static(source: Path, target: Path, batches: list[dict], per_channel: bool, method: str,
                    reduce_range: bool) -> Path:
    """QDQ int8 with activation ranges from `batches` (uint8 activations, int8 weights: VNNI's U8S8)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    names = [i.name for i in onnx.load(str(source), load_external_data=False).graph.input]
    with quiet():
        ort_static(str(source), str(target), Calibration(batches, names), quant_format=QuantFormat.QDQ,
                   per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                   weight_type=QuantType.QInt8,
                   op_types_to_quantize=["MatMul", "Gemm"], calibrate_method=methods[method],
                   extra_options={"MatMulConstBOnly": True})
    return target


class OrtModel(nn.Module):
    """An ONNX Runtime session called like a Hugging Face classifier: model(**inputs).logits (a CPU tensor).
    Inputs the graph takes but the batch lacks (token types) are zeros. Threads follow torch's setting."""

    def __init__(self, path: Path, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_):
        from transformers.modeling_outputs import SequenceClassifierOutput

        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feed = {}
        for name in self.names:
            value = given.get(name)
            if value is None:
                value = torch.ones_like(input_ids) if name == "attention_mask" else torch.zeros_like(input_ids)
            feed[name] = value.detach().cpu().numpy()
        (logits,) = self.session.run(["logits"], feed)
        return SequenceClassifierOutput(logits=torch.from_numpy(logits))

    def extra_repr(self) -> str:
        return f"onnx={self.path.name}"
