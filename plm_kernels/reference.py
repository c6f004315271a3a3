"""Exact fp64 references for moe_ffn and sparse_ffn (slow, obvious, for tests only).

Two independent formulations of the MoE FFN so that a mistake in one shows up as a
disagreement with the other: a masked dense computation over all E*m neurons, and a
per-expert loop that mirrors how the fast paths group work.
"""

import torch

from .activations import apply_activation


def _f64(t):
    return None if t is None else t.to(torch.float64)  # differentiable, so tests can compare gradients


def moe_ffn_dense_oracle(x, w_in, b_in, w_out, b_out, expert_idx, expert_weight=None, activation="gelu"):
    """All neurons computed densely, then every neuron scaled by its expert's total gate."""
    x, w_in, b_in, w_out, b_out = map(_f64, (x, w_in, b_in, w_out, b_out))
    T = x.shape[0]
    E, m, d = w_in.shape
    idx = expert_idx.long()
    weight = torch.ones(idx.shape, dtype=torch.float64) if expert_weight is None else _f64(expert_weight)
    # scatter_add: a token listing the same expert twice gets that expert twice
    gates = torch.zeros(T, E, dtype=torch.float64).scatter_add_(1, idx, weight)
    pre = x @ w_in.reshape(E * m, d).T
    if b_in is not None:
        pre = pre + b_in.reshape(E * m)
    h = apply_activation(pre, activation) * gates.repeat_interleave(m, dim=1)
    y = h @ w_out.reshape(E * m, d)
    return y if b_out is None else y + b_out


def moe_ffn_loop_reference(x, w_in, b_in, w_out, b_out, expert_idx, expert_weight=None, activation="gelu"):
    """One expert at a time over the (token, slot) pairs routed to it."""
    x, w_in, b_in, w_out, b_out = map(_f64, (x, w_in, b_in, w_out, b_out))
    idx = expert_idx.long()
    weight = None if expert_weight is None else _f64(expert_weight)
    y = torch.zeros_like(x)
    for e in range(w_in.shape[0]):
        tokens, slots = torch.nonzero(idx == e, as_tuple=True)
        if tokens.numel() == 0:
            continue
        pre = x[tokens] @ w_in[e].T
        if b_in is not None:
            pre = pre + b_in[e]
        h = apply_activation(pre, activation)
        if weight is not None:
            h = h * weight[tokens, slots, None]
        y.index_add_(0, tokens, h @ w_out[e])
    return y if b_out is None else y + b_out


def sparse_ffn_reference(x, w_in, b_in, w_out_t, b_out, neuron_idx, activation="gelu"):
    """Masked dense form of the activation-sparse FFN: inactive neurons get weight 0.

    A neuron listed twice counts twice, matching the gather formulation.
    """
    x, w_in, b_in, w_out_t, b_out = map(_f64, (x, w_in, b_in, w_out_t, b_out))
    mask = torch.bincount(neuron_idx.long(), minlength=w_in.shape[0]).to(torch.float64)
    pre = x @ w_in.T
    if b_in is not None:
        pre = pre + b_in
    y = (apply_activation(pre, activation) * mask) @ w_out_t
    return y if b_out is None else y + b_out
