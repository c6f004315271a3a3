"""Triton gather-GEMV kernels for the activation-sparse FFN at decoding sizes (T <= 16).

Deja Vu's layout: w_in (d_ff, d) and the *transposed* output projection w_out_t (d_ff, d), so
each active neuron is one contiguous row in both. One index set is shared by the batch, so
every weight row read serves all T tokens; T is padded to 16 rows, the smallest tl.dot tile.
"""

import torch
import triton
import triton.language as tl

from .activations import check_activation
from .triton_common import apply_act, check_triton_inputs, dot_precision, interpreter_active, next_pow2

MAX_TOKENS = 16


@triton.jit
def _gather_gemv_kernel(x_ptr, w_ptr, b_ptr, idx_ptr, h_ptr, T, d, n_active,
                        HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """h[:, j] = act(x @ w_in[idx[j]] + b_in[idx[j]]) for a block of active positions j."""
    t = tl.arange(0, BLOCK_T)
    t_ok = t < T
    pos = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    pos_ok = pos < n_active
    neuron = tl.load(idx_ptr + pos, mask=pos_ok, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, d, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < d
        a = tl.load(x_ptr + t[:, None] * d + ks[None, :], mask=t_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + neuron[None, :] * d + ks[:, None], mask=k_ok[:, None] & pos_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + neuron, mask=pos_ok, other=0.0).to(tl.float32)[None, :]
    acc = apply_act(acc, ACT)
    tl.store(h_ptr + t[:, None] * n_active + pos[None, :], acc.to(h_ptr.dtype.element_ty),
             mask=t_ok[:, None] & pos_ok[None, :])


@triton.jit
def _gather_transposed_gemv_kernel(h_ptr, w_ptr, idx_ptr, part_ptr, T, d, n_active, per_split,
                                   PRECISION: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
                                   BLOCK_K: tl.constexpr):
    """part[split] = h[:, J] @ w_out_t[idx[J]] over this split's share J of the active positions.

    Splitting the active list gives enough programs to fill a GPU when d / BLOCK_N is small;
    partial sums go to separate rows and are summed afterwards, so the result is deterministic.
    """
    split = tl.program_id(1)
    t = tl.arange(0, BLOCK_T)
    t_ok = t < T
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < d
    start = split * per_split
    end = tl.minimum(start + per_split, n_active)
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for j0 in range(start, end, BLOCK_K):
        pos = j0 + tl.arange(0, BLOCK_K)
        pos_ok = pos < end
        neuron = tl.load(idx_ptr + pos, mask=pos_ok, other=0).to(tl.int64)
        a = tl.load(h_ptr + t[:, None] * n_active + pos[None, :], mask=t_ok[:, None] & pos_ok[None, :], other=0.0)
        w = tl.load(w_ptr + neuron[:, None] * d + cols[None, :], mask=pos_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    out = part_ptr + (split * BLOCK_T + t)[:, None] * d + cols[None, :]
    tl.store(out, acc, mask=t_ok[:, None] & col_ok[None, :])


def sparse_ffn_triton(x, w_in, b_in, w_out_t, b_out, neuron_idx, activation="gelu", splits=None):
    """Inputs already validated and contiguous (see plm_kernels.api.sparse_ffn).

    splits: how many programs share the active list in the second GEMV (None: by size).
    """
    check_triton_inputs(x, w_in, b_in, w_out_t, b_out)
    act_code = check_activation(activation)
    T, d = x.shape
    if T > MAX_TOKENS:
        raise ValueError(f"the Triton sparse_ffn kernel handles T <= {MAX_TOKENS}, got T={T}")
    n_active = neuron_idx.numel()
    idx = neuron_idx.to(device=x.device, dtype=torch.int32).contiguous()
    if T == 0 or n_active == 0:
        y = torch.zeros_like(x)
        return y if b_out is None else y + b_out
    interp = interpreter_active()
    precision = dot_precision(x.dtype)
    block_t = MAX_TOKENS
    # the interpreter pays per program: few wide ones; a GPU wants many narrow ones
    block_n = 64 if interp else 32
    block_k = min(64 if interp else 128, max(16, next_pow2(d)))
    h = x.new_empty(T, n_active)
    _gather_gemv_kernel[(triton.cdiv(n_active, block_n),)](
        x, w_in, x if b_in is None else b_in, idx, h, T, d, n_active, HAS_BIAS=b_in is not None,
        ACT=act_code, PRECISION=precision, BLOCK_T=block_t, BLOCK_N=block_n, BLOCK_K=block_k)
    block_d = min(128, max(16, next_pow2(d)))
    block_j = 64 if interp else 32
    if splits is None:
        splits = 1 if interp else max(1, min(16, triton.cdiv(n_active, 256)))
    per_split = triton.cdiv(triton.cdiv(n_active, splits), block_j) * block_j
    splits = triton.cdiv(n_active, per_split)
    part = torch.empty(splits, block_t, d, dtype=torch.float32, device=x.device)
    _gather_transposed_gemv_kernel[(triton.cdiv(d, block_d), splits)](
        h, w_out_t, idx, part, T, d, n_active, per_split, PRECISION=precision, BLOCK_T=block_t,
        BLOCK_N=block_d, BLOCK_K=block_j)
    y = part[:, :T].sum(0)
    if b_out is not None:
        y += b_out
    return y.to(x.dtype)
