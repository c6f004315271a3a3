"""Saving and loading a physically pruned model. Its config still says num_attention_heads=12 and one
intermediate_size for all layers, so `from_pretrained` cannot rebuild it: the pruning plan (original ids of
the kept heads and neurons per layer, arch.pruning_plan) is saved beside the weights, and the loader builds
the dense model from the config, shrinks it to the plan, then loads the state dict."""

from __future__ import annotations

import json
from pathlib import Path

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
    from runner.models import load_pruned_dir

    return load_pruned_dir(Path(model_dir), kind, pooling)
