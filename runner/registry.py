"""Lazy method registry: name -> "module:function", imported only when the method runs.

Adding a method: one file runner/methods/<name>.py with `Config` (a dataclass mirroring
conf/method/<name>.yaml) and `run(ctx) -> dict`, one YAML, and one line here.
"""

from __future__ import annotations

import importlib

from runner.errors import UserError

METHODS: dict[str, str] = {
    "compress": "runner.methods.compress:run",
    "finetune": "runner.methods.finetune:run",
    "distill": "runner.methods.distill:run",
    "ki": "runner.methods.ki:run",
    "moefication": "runner.methods.moefication:run",
    "peft": "runner.methods.peft:run",
    "pretrain": "runner.methods.pretrain:run",
    "prompt": "runner.methods.prompt:run",
    "prune": "runner.methods.prune:run",
    "quantize": "runner.methods.quantize:run",
}


def _split(name: str) -> tuple[str, str]:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; available: {', '.join(sorted(METHODS))}")
    module, _, attr = METHODS[name].partition(":")
    return module, attr


def get(name: str):
    """The method's `run(ctx)` function."""
    module, attr = _split(name)
    return getattr(importlib.import_module(module), attr)


def config_class(name: str):
    """The method's `Config` dataclass (its YAML keys, types and defaults)."""
    module, _ = _split(name)
    return importlib.import_module(module).Config
