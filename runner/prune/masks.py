"""Unstructured weight masks as torch parametrizations: `module.weight` becomes W * M in every forward
(`module.parametrizations.weight.original` holds W), and `bake` writes W * M into a plain weight for saving.

- magnitude      M keeps the largest |W| (per matrix, or over all pruned matrices); recomputed by `update`.
- movement       M = TopK(S) over learned scores S (Sanh et al. 2020). Straight-through: dL/dS = dL/dW' * W,
                 so S accumulates the weights' movement away from zero.
- soft_movement  M = 1[sigmoid(S) > tau], straight-through to S, with an L1 penalty on sigmoid(S) that
                 drives the sparsity (not fixed in advance).
- pst            parameter-efficient sparsity training (Li et al. 2022, arXiv 2205.11005): W stays frozen;
                 W' = W + beta U V (a trainable low-rank update) and S = |W'| + alpha1 A B + alpha2 (R 1^T +
                 1 C^T) (data-free magnitude + low-rank + row/column scores), M = TopK(S) per matrix,
                 straight-through to S. Only U, V, A, B, R, C train: (out + in) (r + r_mask) + out + in
                 numbers per matrix instead of 2 out in for movement's weights and scores.

Which matrices are pruned: `select` (arch parts "attention"/"ffn" or regexes over Linear module names).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from runner.errors import UserError
from runner.models import arch

PRUNERS = ("magnitude", "movement", "soft_movement", "pst")


def keep_count(numel: int, sparsity: float) -> int:
    """Entries kept at `sparsity`: numel - round(sparsity * numel) (the target, exactly)."""
    return numel - int(round(sparsity * numel))


def topk_mask(scores: Tensor, keep: int) -> Tensor:
    """A 0/1 mask of scores' shape with exactly `keep` ones, at the largest scores (ties by index)."""
    mask = torch.zeros(scores.numel(), dtype=scores.dtype, device=scores.device)
    if keep > 0:
        mask[torch.topk(scores.detach().flatten(), keep, sorted=False).indices] = 1
    return mask.view_as(scores)


class _StraightThrough(torch.autograd.Function):
    """Forward: a given binary mask. Backward: the gradient goes to the scores unchanged (STE)."""

    @staticmethod
    def forward(ctx, scores: Tensor, mask: Tensor) -> Tensor:
        return mask

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class MagnitudeMask(nn.Module):
    """W * M with M a buffer set by `set_mask` (top-|W| per matrix or global; see `update_magnitude`)."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight))

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


class MovementMask(nn.Module):
    """W * TopK(S): the `keep` fraction of entries with the largest score; S starts at `init`."""

    def __init__(self, weight: Tensor, init: float = 0.0):
        super().__init__()
        self.scores = nn.Parameter(torch.full_like(weight, init))
        self.sparsity = 0.0

    def mask(self) -> Tensor:
        return topk_mask(self.scores, keep_count(self.scores.numel(), self.sparsity))

    def forward(self, weight: Tensor) -> Tensor:
        return weight * _StraightThrough.apply(self.scores, self.mask())


class SoftMovementMask(nn.Module):
    """W * 1[sigmoid(S) > tau]; at least `min_keep` of the entries stay (the largest scores)."""

    def __init__(self, weight: Tensor, init: float = 0.0, min_keep: float = 0.005):
        super().__init__()
        self.scores = nn.Parameter(torch.full_like(weight, init))
        self.threshold = 0.0
        self.min_keep = min_keep

    def mask(self) -> Tensor:
        mask = (torch.sigmoid(self.scores.detach()) > self.threshold).to(self.scores.dtype)
        least = max(1, int(round(self.min_keep * mask.numel())))
        return topk_mask(self.scores, least) if mask.sum() < least else mask

    def penalty(self) -> Tensor:
        """L1 of sigmoid(S) per entry (mean), the regulariser of soft movement pruning."""
        return torch.sigmoid(self.scores).mean()

    def forward(self, weight: Tensor) -> Tensor:
        return weight * _StraightThrough.apply(self.scores, self.mask())


class PSTMask(nn.Module):
    """TopK(S) * (W + beta U V), S = |W + beta U V| + alpha1 A B + alpha2 (R 1^T + 1 C^T). Initialised as the
    reference (AliceMind S4/PST): U, A ~ N(0, 1), V, B, R, C = 0, so W' = W and S = |W| at the start."""

    def __init__(self, weight: Tensor, rank: int = 8, mask_rank: int = 8, beta: float = 1.0, alpha1: float = 1.0,
                 alpha2: float = 1.0):
        super().__init__()
        out, inp = weight.shape
        kw = dict(dtype=weight.dtype, device=weight.device)
        self.U = nn.Parameter(torch.randn(out, rank, **kw))
        self.V = nn.Parameter(torch.zeros(rank, inp, **kw))
        self.A = nn.Parameter(torch.randn(out, mask_rank, **kw))
        self.B = nn.Parameter(torch.zeros(mask_rank, inp, **kw))
        self.R = nn.Parameter(torch.zeros(out, **kw))
        self.C = nn.Parameter(torch.zeros(inp, **kw))
        self.beta, self.alpha1, self.alpha2 = beta, alpha1, alpha2
        self.sparsity = 0.0

    def merged(self, weight: Tensor) -> Tensor:
        return weight + self.beta * self.U @ self.V

    def score(self, merged: Tensor) -> Tensor:
        return merged.abs() + self.alpha1 * self.A @ self.B + self.alpha2 * (self.R[:, None] + self.C[None, :])

    def forward(self, weight: Tensor) -> Tensor:
        merged = self.merged(weight)
        s = self.score(merged)
        return merged * _StraightThrough.apply(s, topk_mask(s, keep_count(s.numel(), self.sparsity)))


# ---------------------------------------------------------------------------------------------------------
# Which matrices


def select(model: nn.Module, matrices: list[str]) -> dict[str, nn.Linear]:
    """{module name: Linear} to prune. "attention" = every encoder attention's q, k, v, o; "ffn" = every
    encoder FFN's W_in (W_gate) and W_out (arch); "decoder_attention" / "decoder_ffn" the same in a T5
    decoder (self and cross attention); anything else is a regex over the names of the Linear modules."""
    by_id = {id(m): n for n, m in model.named_modules()}
    chosen: dict[str, nn.Linear] = {}
    for item in matrices:
        stack = "decoder" if item.startswith("decoder_") else "encoder"
        if item in ("attention", "decoder_attention"):
            found = [lin for a in arch.attentions(model, stack=stack) for lin in (a.q, a.k, a.v, a.o)]
        elif item in ("ffn", "decoder_ffn"):
            found = [lin for f in arch.ffns(model, stack=stack) for lin in (f.w_in, f.w_gate, f.w_out)
                     if lin is not None]
        else:
            try:
                pattern = re.compile(item)
            except re.error as e:
                raise UserError(f"method.matrices: bad regex '{item}' ({e})") from None
            found = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.search(n)]
        for lin in found:
            chosen[by_id[id(lin)]] = lin
    if not chosen:
        raise UserError(f"method.matrices={matrices} selects no Linear module to prune "
                        "(use attention, ffn or a regex over module names)")
    return dict(sorted(chosen.items()))


def attach(modules: dict[str, nn.Module], pruner: str, score_init: float = 0.0, pst: dict | None = None
           ) -> dict[str, nn.Module]:
    """Register the pruner's mask on each module's weight; returns {module name: mask module}. `pst`: PSTMask's
    keyword arguments (rank, mask_rank, beta, alpha1, alpha2); PST freezes each W and its bias."""
    if pruner not in PRUNERS:
        raise UserError(f"unknown unstructured pruner '{pruner}'; known: {', '.join(PRUNERS)}")
    masks = {}
    for name, module in modules.items():
        w = module.weight.detach()
        if pruner == "magnitude":
            mask = MagnitudeMask(w)
        elif pruner == "pst":
            mask = PSTMask(w, **(pst or {}))
        else:
            mask = {"movement": MovementMask, "soft_movement": SoftMovementMask}[pruner](w, init=score_init)
        parametrize.register_parametrization(module, "weight", mask)
        if pruner == "pst":
            original(module).requires_grad_(False)
            if module.bias is not None:
                module.bias.requires_grad_(False)
        masks[name] = mask
    return masks


def original(module: nn.Module) -> Tensor:
    """The unmasked weight of a parametrized module."""
    return module.parametrizations.weight.original


@torch.no_grad()
def update_magnitude(modules: dict[str, nn.Module], sparsity: float, scope: str = "local") -> None:
    """Zero the smallest |W| so exactly round(sparsity * n) entries are pruned: per matrix (local) or
    over all matrices together (global, n = their total size)."""
    if scope == "local":
        for module in modules.values():
            w = original(module)
            module.parametrizations.weight[0].mask.copy_(topk_mask(w.abs(), keep_count(w.numel(), sparsity)))
        return
    if scope != "global":
        raise UserError(f"method.scope must be local or global, got '{scope}'")
    weights = [original(m) for m in modules.values()]
    flat = torch.cat([w.detach().abs().flatten().float() for w in weights])
    mask = topk_mask(flat, keep_count(flat.numel(), sparsity))
    start = 0
    for module, w in zip(modules.values(), weights, strict=True):
        module.parametrizations.weight[0].mask.copy_(mask[start:start + w.numel()].view_as(w))
        start += w.numel()


def set_level(masks: dict[str, nn.Module], value: float) -> None:
    """The movement masks' sparsity, or the soft movement masks' threshold tau."""
    for mask in masks.values():
        if isinstance(mask, MovementMask | PSTMask):
            mask.sparsity = value
        elif isinstance(mask, SoftMovementMask):
            mask.threshold = value


def penalty(masks: dict[str, nn.Module]) -> Tensor:
    """Mean over matrices of the soft-movement L1 term."""
    terms = [m.penalty() for m in masks.values() if isinstance(m, SoftMovementMask)]
    return torch.stack(terms).mean()


def scores(model: nn.Module) -> list[nn.Parameter]:
    """The mask parameters (movement scores; PST's U, V, A, B, R, C), trained in their own optimizer group."""
    return [p for n, p in model.named_parameters() if ".parametrizations." in n and not n.endswith(".original")]


@torch.no_grad()
def bake(modules: dict[str, nn.Module]) -> None:
    """Remove the parametrizations, leaving W * M as the plain weight (what is evaluated and saved)."""
    for module in modules.values():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


@torch.no_grad()
def sparsity(modules: dict[str, nn.Module]) -> dict:
    """Measured share of zero entries in each effective weight, and over all of them."""
    per, zeros, total = {}, 0, 0
    for name, module in modules.items():
        w = module.weight
        z = int((w == 0).sum())
        per[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    return {"overall": zeros / max(total, 1), "pruned_parameters": total, "zeros": zeros, "per_matrix": per}
