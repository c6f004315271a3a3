"""Routers: score the E experts of one FFN for each token; the MoE FFN keeps the top k (MoEfication §3.2).

    gt          oracle: each expert's positive activation sum, from the dense hidden layer (an upper bound
                that costs a full FFN input projection, so no speedup)
    similarity  -||x^ - c_e||: x^ the L2-normalised input, c_e the mean of expert e's normalised W_in rows
    mlp         Linear(d -> E, no bias, initialised from the centres) -> tanh -> Linear(E -> E, identity
                init), on x^; trained with BCE-with-logits towards the per-expert positive activation sum
                normalised by the token's largest one (Adam; the epoch with the lowest held-out loss is kept)

Every router is called as router(x, moe) -> (T, E) scores, `moe` being the MoEFFN that owns it (the
oracle reads the experts' weights from it).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROUTERS = ("gt", "similarity", "mlp")


def active_experts(num_experts: int, ratio: float) -> int:
    """k = round(ratio * E), at least 1 (half rounds up)."""
    return max(1, min(num_experts, math.floor(ratio * num_experts + 0.5 + 1e-9)))


def expert_mass(h: Tensor, groups: Tensor) -> Tensor:
    """(T, d_ff) activations -> (T, E) positive activation sum of each expert's neurons."""
    return F.relu(h)[:, groups].sum(-1)


def centres(w_in: Tensor, groups: Tensor) -> Tensor:
    """(E, d): mean of each expert's L2-normalised W_in rows."""
    return F.normalize(w_in.detach().float(), dim=1)[groups].mean(1)


class GroundTruthRouter(nn.Module):
    def forward(self, x: Tensor, moe) -> Tensor:
        num_experts, size, d = moe.w_in.shape
        bias = None if moe.b_in is None else moe.b_in.reshape(-1)
        h = moe.act(F.linear(x, moe.w_in.reshape(-1, d), bias))  # the dense hidden layer
        return h.clamp_min(0).view(-1, num_experts, size).sum(-1)


class SimilarityRouter(nn.Module):
    def __init__(self, centre: Tensor):
        super().__init__()
        self.register_buffer("centre", centre.clone())

    def forward(self, x: Tensor, moe=None) -> Tensor:
        # -||x^ - c||^2 = 2 x^.c - ||c||^2 - 1: one matmul, same ranking as the distance
        c = self.centre.to(x.dtype)
        return 2 * F.normalize(x, dim=-1) @ c.t() - (c * c).sum(-1)


class MLPRouter(nn.Module):
    def __init__(self, centre: Tensor):
        super().__init__()
        num_experts, d = centre.shape
        self.fc1 = nn.Linear(d, num_experts, bias=False)
        self.fc2 = nn.Linear(num_experts, num_experts)
        with torch.no_grad():
            self.fc1.weight.copy_(centre)
            self.fc2.weight.copy_(torch.eye(num_experts))
            self.fc2.bias.zero_()

    def forward(self, x: Tensor, moe=None) -> Tensor:
        return self.fc2(torch.tanh(self.fc1(F.normalize(x, dim=-1))))


def build(kind: str, w_in: Tensor, groups: Tensor) -> nn.Module:
    """An untrained router of `kind` for an FFN with input weights w_in (d_ff, d) split into `groups`."""
    if kind == "gt":
        return GroundTruthRouter()
    if kind == "similarity":
        return SimilarityRouter(centres(w_in, groups))
    if kind == "mlp":
        return MLPRouter(centres(w_in, groups))
    raise ValueError(f"unknown router '{kind}'; valid: {', '.join(ROUTERS)}")


def mlp_targets(mass: Tensor) -> Tensor:
    """Per-expert positive activation sum divided by the token's largest one, in [0, 1]."""
    return mass / mass.amax(dim=1, keepdim=True).clamp_min(1e-6)


def train_mlp(router: MLPRouter, x: Tensor, mass: Tensor, held_x: Tensor, held_mass: Tensor, *, epochs: int,
              lr: float, batch_size: int, seed: int) -> dict:
    """Fit the router to the experts' activation mass; keep the epoch with the lowest held-out loss.

    Returns {"train_loss": per epoch, "held_out_loss": per epoch (index 0 = before training), "best_epoch"}.
    """
    gen = torch.Generator().manual_seed(seed)
    target, held_target = mlp_targets(mass), mlp_targets(held_mass)
    opt = torch.optim.Adam(router.parameters(), lr=lr)

    def held_loss() -> float:
        with torch.no_grad():
            return F.binary_cross_entropy_with_logits(router(held_x), held_target).item()

    history = {"train_loss": [], "held_out_loss": [held_loss()], "best_epoch": 0}
    best = copy.deepcopy(router.state_dict())
    for epoch in range(1, epochs + 1):
        total, n = 0.0, 0
        for idx in torch.randperm(x.shape[0], generator=gen).split(batch_size):
            loss = F.binary_cross_entropy_with_logits(router(x[idx]), target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
            n += idx.numel()
        history["train_loss"].append(total / max(n, 1))
        history["held_out_loss"].append(held_loss())
        if history["held_out_loss"][-1] < history["held_out_loss"][history["best_epoch"]]:
            history["best_epoch"] = epoch
            best = copy.deepcopy(router.state_dict())
    router.load_state_dict(best)
    return history


def mass_recall(scores: Tensor, mass: Tensor, k: int) -> float:
    """Share of the oracle's top-k activation mass that the router's top-k experts hold (1.0 = oracle)."""
    oracle = mass.topk(k, dim=1).values.sum()
    chosen = mass.gather(1, scores.topk(k, dim=1).indices).sum()
    return float(chosen / oracle.clamp_min(1e-12))
