"""Routing helpers in plain torch (argsort / bincount / cumsum), testable on CPU.

A token-expert *pair* is one entry of the (T, k) `expert_idx` matrix; its id is
`t * k + slot`, so `pair // k` is the token and the (T, k, d) reduction buffer is
indexed by pair id directly.
"""

import torch


def route_topk(scores: torch.Tensor, k: int, *, softmax: bool = False):
    """Pick the k highest-scoring experts per token.

    scores: (T, E) router scores. Returns (expert_idx (T, k) int64, expert_weight (T, k)).
    The weights are the selected scores themselves, or their softmax over the k selected
    experts when `softmax=True` (Mixtral-style renormalisation). MoEfication ignores the
    weights and passes expert_weight=None to moe_ffn.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (T, E), got {tuple(scores.shape)}")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be in [1, {scores.shape[1]}], got {k}")
    weight, idx = torch.topk(scores, k, dim=1)
    if softmax:
        weight = torch.softmax(weight.float(), dim=1).to(scores.dtype)
    return idx, weight


def expert_counts(flat_idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Pairs per expert; raises on an index outside [0, num_experts)."""
    if flat_idx.numel() == 0:
        return torch.zeros(num_experts, dtype=torch.long, device=flat_idx.device)
    counts = torch.bincount(flat_idx.long(), minlength=num_experts)  # raises on negative ids
    if counts.numel() > num_experts:
        raise ValueError(f"expert_idx holds an expert id >= num_experts={num_experts}")
    return counts


def align(expert_idx: torch.Tensor, num_experts: int, block_m: int):
    """Sort token-expert pairs by expert and pad each expert's list to a multiple of block_m.

    Only the index list is padded, never the activations: padding slots hold the sentinel
    `T * k` (one past the last pair id), which the kernels mask out.

    Returns (sorted_pair_ids int32 (num_padded,), block_expert int32 (num_padded // block_m,),
    num_padded int). Block b covers sorted_pair_ids[b*block_m:(b+1)*block_m], all of expert
    block_expert[b]. Within an expert, pairs keep ascending pair (= token) order, which keeps
    the row gathers of x monotone in memory.
    """
    if block_m < 1:
        raise ValueError("block_m must be positive")
    flat = expert_idx.reshape(-1)
    num_pairs = flat.numel()
    device = flat.device
    counts = expert_counts(flat, num_experts)
    blocks = (counts + block_m - 1) // block_m
    padded = blocks * block_m
    starts = torch.cumsum(counts, 0) - counts
    padded_starts = torch.cumsum(padded, 0) - padded
    order = torch.argsort(flat, stable=True)
    expert_of_sorted = flat[order].long()
    position = torch.arange(num_pairs, device=device) - starts[expert_of_sorted] + padded_starts[expert_of_sorted]
    num_padded = int(padded.sum())
    sorted_pair_ids = torch.full((num_padded,), num_pairs, dtype=torch.int32, device=device)
    sorted_pair_ids[position] = order.to(torch.int32)
    block_expert = torch.repeat_interleave(torch.arange(num_experts, device=device), blocks).to(torch.int32)
    return sorted_pair_ids, block_expert, num_padded
