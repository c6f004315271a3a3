"""Saving and loading a physically pruned model. Its config still says num_attention_heads=12 and one
intermediate_size for all layers, so `from_pretrained` cannot rebuild it: the pruning plan (original ids of
the kept heads and neurons per layer, arch.pruning_plan) is saved beside the weights, and the loader builds
the dense model from the config, shrinks it to the plan, then loads the state dict."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from runner.models import arch


def save_plan(model: nn.Module, model_dir: Path) -> dict:
    """Write arch.pruning_plan(model) as pruning_plan.json into an already saved model directory."""
    plan = arch.pruning_plan(model)
    plan["sizes"] = arch.layer_sizes(model)
    (Path(model_dir) / arch.PLAN_FILE).write_text(json.dumps(plan, indent=1))
    return plan


def has_plan(model_dir: Path) -> bool:
    return (Path(model_dir) / arch.PLAN_FILE).exists()


def load_pruned(model_dir: Path, kind: str = "classification", pooling: str = "cls") -> nn.Module:
    """The pruned model saved in `model_dir` (weights + pruning_plan.json), eval mode."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from runner.models import _auto_class

    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    model = _auto_class(kind).from_config(config)
    if kind == "classification":
        arch.set_pooling(model, pooling)
    arch.apply_plan(model, json.loads((model_dir / arch.PLAN_FILE).read_text()))
    state = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(str(file)))
    if not state:
        state = torch.load(model_dir / "pytorch_model.bin", map_location="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"{model_dir}: state dict does not fit the pruning plan "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()
