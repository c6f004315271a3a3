"""What a run tells the cross-method comparison besides its metric, read from results.json the way each method
family writes it, and the few facts that follow from a method's definition rather than from a measurement.

Measured (a table line stores the mean over its runs in its CSV, so a committed table carries them):
    speed_1x64, speed_32x128   results.json `speed`: the deployed model's speedup over the dense reference it
                               was timed beside (distill: student, prune: pruned, MoEfication: moe@<ratio>;
                               quantize and compress name it in `deployed.model`: int8, the whole chain)
    parameters                 parameters of the model the method deploys (peft: `trainable.total`, else
                               `parameters.total`)
    trainable_pct              share of those parameters that trained (peft: `trainable.percent`, else
                               `parameters.trainable` / `parameters.total`)
    size_mb                    the saved artefact (peft: `saved.bytes`; quantize, compress: `deployed.size_mb`;
                               else the run's model/ folder)
    train_s                    `train.train_runtime`

By definition (used by runner.tables.compare only, never written into a recipe table, and always said so):
    dense_deployed()   the deployed model is the dense architecture, so its speedup is 1.0 (merged LoRA,
                       unstructured zeros in dense matrices, ...)
    all_weights()      the method trains every weight of its model (trainable 100%)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.tables.collect import MISSING, as_number, lookup

FACTS = ("speed_1x64", "speed_32x128", "parameters", "trainable_pct", "size_mb", "train_s")
SHAPES = {"speed_1x64": "1x64", "speed_32x128": "32x128"}

# method.peft options whose trained part folds into (or lives in) the dense weights: the deployed model is MiniLM
MERGED_PEFT = {"lora": "LoRA merged into the dense weights", "ia3": "IA3 scales merged into the dense weights",
               "ln": "LayerNorm weights of the dense model", "bitfit": "bias terms of the dense model",
               "child_f": "every weight of the dense model", "child_d": "every weight of the dense model"}
UNSTRUCTURED = ("magnitude", "movement", "soft_movement")


def deployed_name(speedups: dict[str, Any], reference: Any, metric: str) -> str | None:
    """The key of the deployed model among results.json speed's models: MoEfication's moe@<ratio> for a metric
    of that ratio (accuracy@0.25), else the one model that is not the reference."""
    if "@" in metric:
        ratio = metric.rsplit("@", 1)[1]
        try:
            key = f"moe@{float(ratio)!r}"
        except ValueError:
            key = f"moe@{ratio}"
        return key if key in speedups else None
    others = [name for name in speedups if name != reference]
    return others[0] if len(others) == 1 else None


def chain_end(results: dict[str, Any]) -> dict[str, Any]:
    """A compress chain deploys its last step: results.json written before the `deployed` field name it
    through `steps` (chain, parameters, size_mb of the last row); {} for every other method."""
    steps = results.get("steps")
    last = steps[-1] if isinstance(steps, list) and steps and isinstance(steps[-1], dict) else {}
    return {"model": last.get("chain"), "parameters": last.get("parameters"), "size_mb": last.get("size_mb")} if last else {}


def run_facts(results: dict[str, Any], metric: str = "", run_dir: Path | None = None) -> dict[str, float]:
    """The measured facts of one run (keys of FACTS that it reports): of the model its `metric` scores."""
    if metric.startswith("dense."):  # the run's dense reference: the model every speedup is measured against
        return reference_facts(results.get("dense") if isinstance(results.get("dense"), dict) else {})
    out: dict[str, float] = {}
    speed = results.get("speed")
    # methods that time several models (quantize, compress) name the one they deploy
    deployed = results.get("deployed") if isinstance(results.get("deployed"), dict) else chain_end(results)
    if isinstance(speed, dict):
        for key, shape in SHAPES.items():
            speedups = (speed.get(shape) or {}).get("speedup") or {}
            name = deployed.get("model") or deployed_name(speedups, speed.get("reference"), metric)
            value = as_number(speedups.get(name)) if name else None
            if value is not None:
                out[key] = value
    peft = results.get("trainable") if isinstance(results.get("trainable"), dict) else {}
    params = results.get("parameters") if isinstance(results.get("parameters"), dict) else {}
    # a chain's or int8 model's own count before the run's model as built (the dense one it starts from)
    total = as_number(peft.get("total")) or as_number(deployed.get("parameters")) or as_number(params.get("total"))
    if total:
        out["parameters"] = total
    percent = as_number(peft.get("percent"))
    trainable = as_number(params.get("trainable"))
    if percent is not None:
        out["trainable_pct"] = percent
    elif trainable is not None and as_number(params.get("total")) and not deployed:  # else: of the model as built
        out["trainable_pct"] = 100 * trainable / as_number(params.get("total"))
    saved = as_number(lookup(results, "saved.bytes")) if lookup(results, "saved.bytes") is not MISSING else None
    size = saved if saved is not None else folder_bytes(run_dir / "model") if run_dir else None
    if as_number(deployed.get("size_mb")) is not None:  # the artefact itself (an int8 graph), not its float source
        size = as_number(deployed.get("size_mb")) * 1e6
    if size:
        out["size_mb"] = size / 1e6
    runtime = lookup(results, "train.train_runtime")
    if as_number(runtime) is not None:
        out["train_s"] = as_number(runtime)
    return out


def reference_facts(dense: dict[str, Any]) -> dict[str, float]:
    """Facts of a run's dense reference (results.json `dense`): speedup 1.0 (the speedups' denominator), and
    the parameters and size it records."""
    out = {"speed_1x64": 1.0, "speed_32x128": 1.0}
    for key in ("parameters", "size_mb"):
        if as_number(dense.get(key)) is not None:
            out[key] = as_number(dense.get(key))
    return out


def folder_bytes(folder: Path) -> float | None:
    if not folder.is_dir():
        return None
    return float(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())) or None


def setting(method: dict[str, Any], key: str) -> str:
    value = method.get(key)
    return "" if value is None else str(value)


def dense_deployed(method: dict[str, Any]) -> str | None:
    """Why the model a method deploys is the dense architecture (its speedup is 1.0 by definition), or None."""
    name = setting(method, "name")
    if name == "finetune":
        return "the dense model itself"
    if name == "peft" and setting(method, "peft") in MERGED_PEFT:
        return MERGED_PEFT[setting(method, "peft")]
    if name == "prune" and setting(method, "pruner") in UNSTRUCTURED:
        return "unstructured zeros in dense matrices (no kernel skips them)"
    return None


def all_weights(method: dict[str, Any]) -> str | None:
    """Why a method trains every weight of the model it deploys (trainable 100% by definition), or None."""
    name = setting(method, "name")
    if name == "finetune":
        return "full fine-tuning trains every weight"
    if name == "distill":
        return "every weight of the student trains"
    if name == "prune":
        return "every remaining weight trains while pruning"
    return None


def not_measured(method: dict[str, Any]) -> str:
    """Why a method's runs may have no speedup: what its deployed model is ("" when its runs measure one)."""
    name = setting(method, "name")
    if name == "peft":
        return "virtual tokens lengthen every input; not timed"
    if name == "prompt":
        return "the template lengthens every input; not timed"
    if name == "moefication":
        return "no speed stage in these runs; runner.bench moe times MoEfication apart: recipes/moefication/README.md"
    return ""
