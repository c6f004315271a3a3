"""The torch path of moe_ffn and sparse_ffn: what the MoEfication module runs on CPU.

Measured on the 2-core dev CPU (BERT-base, E=96 experts of 32 neurons, k=24, T=4096, fp32):
a per-expert loop that gathers into *fresh* tensors spends most of its time in page faults
(a fresh multi-MB tensor per expert, or one 300 MB k-fold copy of x), not in the GEMMs.
Writing every gather and GEMM into one reused workspace (`out=` variants) makes the gather
~10x cheaper; what is left is close to the expert GEMMs' own cost. Token chunks of a few
thousand rows keep x and y resident in L3 when T is large (16k: 476 -> 398 ms).
"""

import time

import torch

from .activations import apply_activation, apply_activation_
from .routing import expert_counts

# Tokens per chunk: 4096 rows of d=768..1024 fp32 (12-16 MB) stay in the 32 MB L3 measured here.
DEFAULT_CHUNK_TOKENS = 4096


class _StageClock:
    """Adds wall time per stage into a dict (CPU ops are synchronous, so this is exact)."""

    def __init__(self, timings):
        self.timings = timings
        self.last = time.perf_counter()

    def __call__(self, stage):
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + (now - self.last)
        self.last = now


def _no_clock(stage):
    pass


def moe_ffn_torch(x, w_in, b_in, w_out, b_out, expert_idx, expert_weight=None, activation="gelu",
                  chunk_tokens=DEFAULT_CHUNK_TOKENS, timings=None):
    """Expert-grouped MoE FFN with torch ops. `timings` (a dict) receives seconds per stage."""
    if _needs_grad(x, w_in, b_in, w_out, b_out, expert_weight):
        return _moe_ffn_autograd(x, w_in, b_in, w_out, b_out, expert_idx, expert_weight, activation)
    clock = _no_clock if timings is None else _StageClock(timings)
    T, d = x.shape
    E, m, _ = w_in.shape
    k = expert_idx.shape[1]
    # Half types accumulate the k partial sums in fp32, like the Triton path.
    acc_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    if b_out is None:
        y = torch.zeros(T, d, dtype=acc_dtype, device=x.device)
    else:
        y = b_out.to(acc_dtype).expand(T, d).clone()
    if T == 0 or k == 0:
        return y.to(x.dtype)

    # Group pairs by (token chunk, expert); a stable sort keeps tokens ascending inside a group.
    flat = expert_idx.reshape(-1).long()
    counts_e = expert_counts(flat, E)  # validates the ids
    chunk = max(1, min(chunk_tokens or T, T))
    num_chunks = (T + chunk - 1) // chunk
    key = flat
    if num_chunks > 1:
        token_of_pair = torch.arange(T * k, device=x.device) // k
        key = flat + (token_of_pair // chunk) * E
        counts = torch.bincount(key, minlength=num_chunks * E).tolist()
    else:
        counts = counts_e.tolist()
    order = torch.argsort(key, stable=True)
    tokens = order // k
    gates = None
    if expert_weight is not None:
        gates = expert_weight.reshape(-1)[order].to(x.dtype).unsqueeze(1)
    clock("sort")

    rows = max(counts)
    ws_x = x.new_empty(rows, d)
    ws_h = x.new_empty(rows, m)
    ws_y = x.new_empty(rows, d)
    start = 0
    for group, n in enumerate(counts):
        if n == 0:
            continue
        e = group % E
        tok = tokens[start:start + n]
        xe = torch.index_select(x, 0, tok, out=ws_x[:n])
        clock("gather")
        h = ws_h[:n]
        if b_in is None:
            torch.mm(xe, w_in[e].t(), out=h)
        else:
            torch.addmm(b_in[e], xe, w_in[e].t(), out=h)
        apply_activation_(h, activation)
        if gates is not None:
            h.mul_(gates[start:start + n])
        clock("gemm1")
        ye = torch.mm(h, w_out[e], out=ws_y[:n])
        clock("gemm2")
        y.index_add_(0, tok, ye if ye.dtype == acc_dtype else ye.to(acc_dtype))
        clock("reduce")
        start += n
    return y if y.dtype == x.dtype else y.to(x.dtype)


def _needs_grad(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _moe_ffn_autograd(x, w_in, b_in, w_out, b_out, expert_idx, expert_weight, activation):
    """Same loop with autograd-friendly ops (out= variants do not record gradients); for training."""
    k = expert_idx.shape[1]
    flat = expert_idx.reshape(-1).long()
    counts = expert_counts(flat, w_in.shape[0]).tolist()
    order = torch.argsort(flat, stable=True)
    tokens = (order // k).split(counts)
    gates = None if expert_weight is None else expert_weight.reshape(-1)[order].to(x.dtype).split(counts)
    y = x.new_zeros(x.shape)
    for e, tok in enumerate(tokens):
        if tok.numel() == 0:
            continue
        pre = x.index_select(0, tok) @ w_in[e].t()
        h = apply_activation(pre if b_in is None else pre + b_in[e], activation)
        if gates is not None:
            h = h * gates[e].unsqueeze(1)
        y = y.index_add(0, tok, h @ w_out[e])
    return y if b_out is None else y + b_out


def sparse_ffn_torch(x, w_in, b_in, w_out_t, b_out, neuron_idx, activation="gelu"):
    """Activation-sparse FFN: only the listed neurons' rows of w_in and w_out_t are read."""
    idx = neuron_idx.to(device=x.device, dtype=torch.long)
    w1 = w_in.index_select(0, idx)
    w2 = w_out_t.index_select(0, idx)
    if b_in is None:
        h = x @ w1.t()
    else:
        h = torch.addmm(b_in.index_select(0, idx), x, w1.t())
    # in place saves a copy, but autograd needs the pre-activation
    if _needs_grad(x, w_in, b_in, w_out_t, b_out):
        h = apply_activation(h, activation)
    else:
        apply_activation_(h, activation)
    if b_out is None:
        return h @ w2
    return torch.addmm(b_out, h, w2)
