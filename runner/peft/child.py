"""Child-Tuning (Xu et al., EMNLP 2021, arXiv 2109.05687): update only a "child network" of the weights by
masking their gradients.

    F (task-free)    every trainable tensor: grad *= Bernoulli(p) / p, a fresh sample at every step
    D (task-driven)  before training, the Fisher information of the encoder layers' weights on the training
                     data; the top p share of entries is the child network; grad *= that fixed 0/1 mask

The mask is applied after gradient clipping and before the optimizer's step, hence before AdamW's moment
updates, as the reference's ChildTuningAdamW does inside its step: a masked entry receives a zero
gradient that step (its moments still decay, and weight decay still applies, as in the reference).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from transformers import TrainerCallback

from runner.models import arch


def layer_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable weights of the transformer layers (encoder, and decoder for T5): what Child-Tuning-D
    ranks; embeddings and the task head stay outside the mask, fully trained, as in the reference."""
    layers = tuple(f"{name}." for name in arch.layer_names(model))
    return {n: p for n, p in model.named_parameters() if p.requires_grad and n.startswith(layers)}


@torch.no_grad()
def _accumulate(fisher: dict[str, Tensor], params: dict[str, nn.Parameter], max_grad_norm: float) -> None:
    for name, p in params.items():
        if p.grad is None:
            continue
        if max_grad_norm > 0:  # per tensor, as the reference clips before squaring
            torch.nn.utils.clip_grad_norm_(p, max_grad_norm)
        fisher[name] += p.grad.float() ** 2


def fisher_mask(model: nn.Module, batches: Iterable[dict[str, Tensor]], params: dict[str, nn.Parameter],
                reserve_p: float, max_grad_norm: float = 1.0) -> dict[str, Tensor]:
    """Child-Tuning-D's mask: the empirical Fisher information (mean squared gradient of the task loss over
    `batches`, one pass) of each entry of `params`; entries in the global top `reserve_p` share are kept.
    Returns {name: bool tensor}. The model's gradients are cleared afterwards."""
    if not 0 < reserve_p <= 1:
        raise ValueError(f"reserve_p must be in (0, 1], got {reserve_p}")
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.train()  # the loss as training sees it (dropout on), as the reference computes it
    device = next(model.parameters()).device
    n = 0
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        _accumulate(fisher, params, max_grad_norm)
        n += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if n == 0:
        raise ValueError("fisher_mask: no batches")
    flat = torch.cat([f.flatten() for f in fisher.values()])
    keep = max(1, round(reserve_p * flat.numel()))
    threshold = flat.kthvalue(flat.numel() - keep + 1).values  # the keep-th largest score
    return {name: f >= threshold for name, f in fisher.items()}


class ChildTuning(TrainerCallback):
    """The gradient mask as a Trainer callback (on_pre_optimizer_step: after clipping, before the step).

    mode "F": every tensor in `params`, grad *= Bernoulli(reserve_p) / reserve_p, resampled each step.
    mode "D": grad *= masks[name] for the tensors in `masks` (fixed); the others are left as they are.
    `kept` records, per step, the share of the non-zero gradient entries that the mask left non-zero.
    """

    def __init__(self, params: dict[str, nn.Parameter], mode: str, reserve_p: float,
                 masks: dict[str, Tensor] | None = None):
        if mode not in ("F", "D"):
            raise ValueError(f"Child-Tuning mode must be 'F' or 'D', got {mode!r}")
        if not 0 < reserve_p <= 1:
            raise ValueError(f"reserve_p must be in (0, 1], got {reserve_p}")
        if mode == "D" and masks is None:
            raise ValueError("Child-Tuning-D needs the Fisher masks (fisher_mask)")
        self.params, self.mode, self.reserve_p = params, mode, reserve_p
        self.masks = masks or {}
        self.kept: list[float] = []

    @torch.no_grad()
    def apply(self) -> None:
        before = after = 0
        names = self.params if self.mode == "F" else self.masks
        for name in names:
            grad = self.params[name].grad
            if grad is None:
                continue
            before += int(torch.count_nonzero(grad))
            if self.mode == "F":
                keep = torch.bernoulli(torch.full_like(grad, self.reserve_p))
                grad.mul_(keep).div_(self.reserve_p)
            else:
                mask = self.masks[name]
                if mask.device != grad.device:
                    self.masks[name] = mask = mask.to(grad.device)
                grad.mul_(mask)
            after += int(torch.count_nonzero(grad))
        self.kept.append(after / before if before else 0.0)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.apply()
