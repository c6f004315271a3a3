"""int8 quantization of a fine-tuned (or pruned, or distilled) model: post-training (PTQ) or
quantization-aware training (QAT, BMCook's recipe), deployed on ONNX Runtime or in torch.

    base      method.base_run (any finished run with a model: finetune, prune, distill, a compress step)
              or the model fine-tuned here (a shared stage)                                  dense/model
    (qat)     fine-tune with every Linear fake-quantized in the deployment backend's integer grid, the
              straight-through estimator through the rounding, optional KD from the fp32 base     qat/
    convert   onnxruntime: export to ONNX, (fuse), int8 dynamic or static (calibrated on training
              batches) | torch: dynamic int8 Linears (fbgemm) | torchao: per-token int8, weight-only int8/int4
    evaluate  the deployed model (the ORT session or the int8 module), never the fake-quant one; the fp32
              base beside it; for QAT, how often the deployed and the fake-quant model agree
    speed     the dense fp32 torch model (method.reference_run, default the base) vs the base, the fp32 model
              in ONNX Runtime (so the backend's gain is told apart from int8's) and the int8 model, side by side
    size      MB on disk of the fp32 weights and of the int8 artefact
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from runner import artifacts, speed
from runner.distill.losses import kd_terms
from runner.errors import UserError
from runner.evaluation import evaluate, predict
from runner.models import count_parameters
from runner.quant import deploy, fake
from runner.teacher_logits import cached_logits, teacher_targets
from runner.train import fit

BACKENDS = ("onnxruntime", "torch", "torchao")


@dataclass
class Config:
    """Mirror of conf/method/quantize.yaml."""

    name: str = "quantize"
    base_run: str | None = None
    reference_run: str | None = None
    teacher_run: str | None = None
    backend: Literal["onnxruntime", "torch", "torchao"] = "onnxruntime"
    scheme: Literal["dynamic", "static", "weight_only"] = "dynamic"
    bits: int = 8
    per_channel: bool = True
    reduce_range: bool | None = None
    embeddings: bool = False
    fuse: bool = False
    calibration_batches: int = 8
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    qat: bool = False
    qat_epochs: float | None = None
    qat_lr: float | None = None
    alpha_kd: float = 0.0
    temperature: float = 2.0
    cache_teacher: bool = True
    speed_repeats: int = 5

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ValueError(f"method.bits={self.bits}: int8 or int4 only; set method.bits=8 (or 4 with "
                             "method.backend=torchao method.scheme=weight_only on a GPU)")
        if self.bits == 4 and (self.backend != "torchao" or self.scheme != "weight_only"):
            raise ValueError("method.bits=4 is torchao's weight-only int4: set method.backend=torchao "
                             "method.scheme=weight_only (a CUDA device), or method.bits=8")
        if self.scheme == "static" and self.backend != "onnxruntime":
            raise ValueError(f"method.scheme=static (calibrated activation scales) runs on ONNX Runtime; set "
                             f"method.backend=onnxruntime or method.scheme=dynamic (backend {self.backend})")
        if self.scheme == "weight_only" and self.backend != "torchao":
            raise ValueError("method.scheme=weight_only is torchao's (int8 or int4 weights, float activations): "
                             "set method.backend=torchao")
        if (self.fuse or self.embeddings) and self.backend != "onnxruntime":
            raise ValueError("method.fuse and method.embeddings are ONNX Runtime options; set them false or "
                             "method.backend=onnxruntime")
        if self.qat and self.scheme != "dynamic":
            raise ValueError(f"method.qat trains in the dynamic int8 grid of the backend; method.scheme="
                             f"{self.scheme} has no fake-quant counterpart here: set method.scheme=dynamic")
        if not 0 <= self.alpha_kd <= 1 or self.temperature <= 0:
            raise ValueError(f"method.alpha_kd={self.alpha_kd} must be in [0, 1] and method.temperature > 0")
        if self.alpha_kd > 0 and not self.qat:
            raise ValueError("method.alpha_kd distils during QAT; set method.qat=true or method.alpha_kd=0")
        if self.calibration_batches < 1 or self.speed_repeats < 0:
            raise ValueError("method.calibration_batches must be >= 1 and method.speed_repeats >= 0")
        for key in ("qat_epochs", "qat_lr"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"method.{key}={value} must be > 0 (or null: the train config's)")


def check(ctx) -> None:
    """Refusals before any weights load: the backend's extra, the device, the task."""
    cfg: Config = ctx.method
    if ctx.task.is_mlm:
        raise UserError(f"method=quantize deploys a task head (classification or regression); task "
                        f"{ctx.task_cfg.name} is masked-LM")
    if cfg.backend == "onnxruntime":
        from runner.quant import ort

        ort.require()
        if ctx.model_cfg.family == "t5":
            raise UserError("method.backend=onnxruntime exports encoder classifiers; T5 is an encoder-decoder: "
                            "use method.backend=torch")
    elif cfg.backend == "torchao":
        from runner.quant import eager

        eager.require_torchao()
        if cfg.bits == 4 and ctx.hardware.device != "cuda":
            raise UserError("method.bits=4 (torchao's int4 weight-only kernels) needs a CUDA device: set "
                            "hardware=gpu, or method.bits=8")
    elif ctx.hardware.device == "cuda":
        raise UserError("method.backend=torch is torch's CPU int8 (fbgemm); on a GPU use method.backend=torchao")


def run(ctx) -> dict:
    cfg: Config = ctx.method
    stages = ctx.stages()
    base_dir, dense_stage = base_model(ctx, stages)
    base = deploy.load_deployed(ctx, base_dir)  # a MoEfied base comes back MoEfied (compress chains)
    moe = is_moe(base)
    if moe and (cfg.backend == "onnxruntime" or cfg.qat):
        raise UserError("the base model is MoEfied: its expert FFNs do not export to ONNX and have no QAT here; "
                        "set method.backend=torch method.qat=false (int8 attention and classifier, fp32 experts)")
    out: dict = {"fp32": evaluate(ctx, base)}
    reference = base if not cfg.reference_run else deploy.load_deployed(
        ctx, artifacts.finished_run(cfg.reference_run, key="method.reference_run", task=ctx.task_cfg.name))
    out["dense"] = out["fp32"] if reference is base else evaluate(ctx, reference)  # what % of dense divides by
    model = base
    saved = ctx.path("model")
    if cfg.qat:
        model = copy.deepcopy(base)
        qat = stages.run("qat", qat_key(ctx, base_dir), lambda path: train_qat(ctx, model, base, dense_stage, path))
        model = artifacts.load_model_dir(ctx, qat.path / "model")
        out["qat"] = {k: v for k, v in qat.info.items() if k != "seconds"}
        artifacts.save_model(ctx, model, ctx.run_dir)  # the float weights the int8 model is made from
    else:
        shutil.rmtree(saved, ignore_errors=True)
        shutil.copytree(base_dir, saved)  # the base as it was saved (pruning plan, MoE files)
        (saved / deploy.QUANT_FILE).unlink(missing_ok=True)
    deployed, files, ort_fp32 = convert(ctx, model, saved)
    out["metrics"] = evaluate(ctx, deployed)
    if cfg.qat:
        out["qat"]["agreement"] = agreement(ctx, deployed)
    out["size_mb"] = {"fp32": artifacts.size_mb(base_dir), "int8": artifacts.size_mb(saved, files)}
    ctx.info["parameters"] = count_parameters(model)
    out["deployed"] = {"model": "int8", "parameters": ctx.info["parameters"]["total"], "size_mb": out["size_mb"]["int8"]}
    ctx.info["quantized"] = {**deploy.spec(saved), "linears": len(fake.linears(model)),
                             "cpu_vnni": fake.cpu_has_vnni()}
    if cfg.speed_repeats:
        models = {"dense": reference, **({"base": base} if cfg.reference_run else {}),
                  **({"fp32_onnxruntime": ort_fp32} if ort_fp32 is not None else {}), "int8": deployed}
        speed.record(ctx, models, reference="dense", repeats=cfg.speed_repeats)
    ctx.log(f"quantize: {cfg.backend} {cfg.scheme} int{cfg.bits}: {ctx.task.main_metric} "
            f"{out['metrics'].get(ctx.task.main_metric)} (fp32 {out['fp32'].get(ctx.task.main_metric)}), "
            f"{out['size_mb']['int8']} MB (fp32 {out['size_mb']['fp32']} MB)")
    return out


def is_moe(model) -> bool:
    from runner.moe.module import MoEFFN

    return any(isinstance(m, MoEFFN) for m in model.modules())


def reduce_range(cfg: Config) -> bool:
    """onnxruntime: 7-bit weights unless this CPU has VNNI (method.reduce_range=null) or the key says."""
    if cfg.backend != "onnxruntime":
        return False
    return (not fake.cpu_has_vnni()) if cfg.reduce_range is None else cfg.reduce_range


def base_model(ctx, stages):
    """(the base model's directory, its dense fine-tune stage or None)."""
    cfg: Config = ctx.method
    if cfg.base_run:
        return artifacts.finished_run(cfg.base_run, key="method.base_run", task=ctx.task_cfg.name), None
    stage = artifacts.fine_tuned(ctx, stages, "dense")
    return stage.path / "model", stage


# ---------------------------------------------------------------------------------------------------------
# QAT


def qat_key(ctx, base_dir: Path) -> dict:
    cfg: Config = ctx.method
    return {"base": str(Path(base_dir).resolve()), "backend": cfg.backend, "per_channel": cfg.per_channel,
            "reduce_range": reduce_range(cfg),
            "train": dataclasses.asdict(qat_train(ctx)), "alpha_kd": cfg.alpha_kd, "T": cfg.temperature,
            "teacher": cfg.teacher_run, "seed": ctx.seed, "task": dataclasses.asdict(ctx.task_cfg)}


def qat_train(ctx):
    cfg: Config = ctx.method
    changes = {k: v for k, v in (("epochs", cfg.qat_epochs), ("lr", cfg.qat_lr)) if v is not None}
    return dataclasses.replace(ctx.train, **changes)


def train_qat(ctx, model, base, dense_stage, path: Path) -> dict:
    """Fine-tune with fake quantization; save the float weights (fake quantization removed)."""
    cfg: Config = ctx.method
    teacher, loss_fn = None, None
    if cfg.alpha_kd > 0:
        if cfg.teacher_run:
            teacher_dir = artifacts.finished_run(cfg.teacher_run, key="method.teacher_run", task=ctx.task_cfg.name)
            teacher, teacher_id = artifacts.load_model_dir(ctx, teacher_dir), str(teacher_dir.resolve())
        else:
            teacher, teacher_id = base, (dense_stage.digest if dense_stage else str(Path(cfg.base_run).resolve()))
        cache = cached_logits(ctx, ctx.stages(), teacher, teacher_id) if cfg.cache_teacher else None
        loss_fn = kd_loss(cfg, cache)
    linears = fake.attach(model, cfg.backend, cfg.per_channel, reduce_range(cfg))
    result = fit(ctx, model, output=f"{path.name}/checkpoints", loss_fn=loss_fn, teacher=teacher, train=qat_train(ctx))
    fake_quant = evaluate(ctx, model)
    logits, _, _ = predict(model, ctx.data["validation"], ctx.tokenizer, ctx.train.eval_batch_size)
    torch.save(logits, path / "fake_quant_logits.pt")
    fake.detach(linears)
    artifacts.save_model(ctx, model, path)
    shutil.rmtree(path / "checkpoints", ignore_errors=True)
    return {"fake_quant": fake_quant, "train": result["train"]}


def kd_loss(cfg: Config, cache):
    def loss_fn(model, inputs, teacher, state):
        outputs = model(**inputs)
        target = teacher_targets(cache, teacher, {k: v for k, v in inputs.items() if k != "labels"})
        terms = kd_terms(outputs.logits, target, inputs.get("labels"), alpha=cfg.alpha_kd, temperature=cfg.temperature)
        total = terms.pop("loss")
        state.log(**terms)
        return total, outputs
    return loss_fn


def agreement(ctx, deployed) -> dict:
    """How the deployed int8 model's validation predictions match the fake-quant model's (stored by QAT)."""
    stored = ctx.path("qat") / "fake_quant_logits.pt"
    fake_logits = torch.load(stored, weights_only=True)
    logits, _, _ = predict(deployed, ctx.data["validation"], ctx.tokenizer, ctx.train.eval_batch_size)
    diff = (logits - fake_logits).abs().max().item()
    if ctx.task.is_regression:
        return {"max_abs_diff": diff}
    return {"same_prediction": float((logits.argmax(-1) == fake_logits.argmax(-1)).float().mean()),
            "max_abs_diff": diff}


# ---------------------------------------------------------------------------------------------------------
# Conversion to the deployed model


def calibration(ctx) -> list[dict]:
    """The first method.calibration_batches training batches (model inputs, fixed order)."""
    import itertools

    batches = artifacts.input_batches(ctx, ctx.data["train"], ctx.train.eval_batch_size)
    return list(itertools.islice(batches, ctx.method.calibration_batches))


def convert(ctx, model, saved: Path):
    """(the deployed model, its artefact files in `saved`, the fp32 ORT session or None); writes quant.json."""
    cfg: Config = ctx.method
    spec = {"backend": cfg.backend, "scheme": cfg.scheme, "bits": cfg.bits, "per_channel": cfg.per_channel,
            "reduce_range": reduce_range(cfg)}
    if cfg.backend != "onnxruntime":
        deployed = deploy.convert(model, cfg.backend, cfg.scheme, cfg.bits, cfg.per_channel)
        torch.save(deployed.state_dict(), saved / "int8.pt")
        deploy.write_spec(saved, **spec, artefact="int8.pt")
        return deployed, ["int8.pt"], None
    from runner.quant import ort

    work = ctx.path("onnx")
    work.mkdir(exist_ok=True)
    fp32 = ort.export(model, work / "fp32.onnx")
    info = {}
    if cfg.fuse:
        info["fused"] = ort.fuse(fp32, work / "fused.onnx", model)
        fp32 = work / "fused.onnx"
    target = saved / "model.onnx"
    if cfg.scheme == "static":
        ort.quantize_static(fp32, target, calibration(ctx), cfg.per_channel, cfg.calibration_method,
                            spec["reduce_range"])
    else:
        ort.quantize_dynamic(fp32, target, cfg.per_channel, cfg.embeddings, spec["reduce_range"])
    deploy.write_spec(saved, **spec, artefact="model.onnx", fuse=cfg.fuse, embeddings=cfg.embeddings, **info)
    ctx.info["onnx"] = {"fp32_mb": artifacts.size_mb(fp32), **info}
    return ort.OrtModel(target), ["model.onnx"], ort.OrtModel(fp32)
