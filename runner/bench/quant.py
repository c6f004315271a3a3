"""int8 backends on this CPU: MiniLM in fp32 and int8, in torch and in ONNX Runtime, side by side in one process.

    python -m runner.bench quant [--threads 1] [--repeats 7] [--torchao]

Times, on random token ids at 1 x 64 and 32 x 128 (runner.speed.measure: interleaved, min of repeats):
    torch fp32                 the reference of every speedup (what the other recipes call dense)
    torch int8                 torch.ao dynamic int8 Linears (fbgemm), method.backend=torch
    onnxruntime fp32           the same model exported, unfused: the backend's own gain
    onnxruntime fp32 fused     after ORT's transformer optimizer (attention, LayerNorm, GELU fusion)
    onnxruntime int8           dynamic int8 with this CPU's weight range (7-bit without VNNI), method.backend's default
    onnxruntime int8 fused     fused, then int8
    torchao int8 (--torchao)   per-token dynamic int8 through torchao, when its extra is installed
It also prints each int8 model's largest logit difference from fp32 on one batch, so a backend that is fast
because it is wrong (ORT's full-range int8 weights on a CPU without VNNI) shows it. The classifier is untrained:
accuracy is not the point, the cost and the numerical agreement are.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def models(threads: int, with_torchao: bool) -> dict:
    from runner.bench.moe import load_minilm
    from runner.quant import eager, fake, ort

    ort.require()
    dense, origin = load_minilm()
    print(f"MiniLM: {origin}; CPU VNNI: {fake.cpu_has_vnni()} (ORT int8 weights {'8' if fake.cpu_has_vnni() else '7'}-bit)")
    work = Path(tempfile.mkdtemp(prefix="plm-bench-quant-"))
    fp32 = ort.export(dense, work / "fp32.onnx")
    fused = work / "fused.onnx"
    print(f"fused operators: {ort.fuse(fp32, fused, dense)}")
    reduce = not fake.cpu_has_vnni()
    ort.quantize_dynamic(fp32, work / "int8.onnx", True, False, reduce)
    ort.quantize_dynamic(fused, work / "int8-fused.onnx", True, False, reduce)
    out = {"torch fp32": dense, "torch int8": eager.dynamic_int8(dense),
           "onnxruntime fp32": ort.OrtModel(fp32, threads), "onnxruntime fp32 fused": ort.OrtModel(fused, threads),
           "onnxruntime int8": ort.OrtModel(work / "int8.onnx", threads),
           "onnxruntime int8 fused": ort.OrtModel(work / "int8-fused.onnx", threads)}
    if with_torchao:
        out["torchao int8"] = eager.torchao_int8(dense, "dynamic", 8)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.bench quant", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--torchao", action="store_true", help="also time torchao's dynamic int8 (needs its extra)")
    a = p.parse_args(argv)
    import torch

    from runner import speed

    torch.set_num_threads(a.threads)
    found = models(a.threads, a.torchao)
    x = speed.inputs(8, 64, 30522, seed=1)
    with torch.inference_mode():
        reference = found["torch fp32"](**x).logits
        for name, model in found.items():
            if name != "torch fp32":
                print(f"{name}: max |logit - fp32| {(model(**x).logits - reference).abs().max().item():.2e}")
    result = speed.measure(found, reference="torch fp32", vocab_size=30522, repeats=a.repeats)
    print(f"{'':26}" + "".join(f"{shape:>22}" for shape in ("1x64", "32x128")))
    for name in found:
        cells = [f"{result[s]['ms'][name]:>10.1f} ms {result[s]['speedup'][name]:>6.2f}x" for s in ("1x64", "32x128")]
        print(f"{name:26}" + "".join(f"{c:>22}" for c in cells))
    return 0
