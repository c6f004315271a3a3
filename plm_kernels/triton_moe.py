"""Triton kernels for the expert-grouped MoE FFN (vLLM-style index alignment, own code).

Pipeline: align() sorts token-expert pairs by expert and pads each expert's index list to
BLOCK_M, so every BLOCK_M-row block belongs to one expert. Then
  GEMM1  H[block rows] = act(x[token rows] @ w_in[e].T + b_in[e])      (x rows gathered by index)
  GEMM2  gate * (H @ w_out[e]) -> a (T, k, d) buffer (then a slot sum)  reduce="buffer"
                               -> fp32 atomics into (T, d)              reduce="atomic"
or, for m <= 64, one fused kernel that keeps the H tile in registers. x is never copied.

On CUDA the align stage runs on the device (plm_kernels.triton_align: two kernels, no host sync, buffers of a
static length), so the forward can be captured in a CUDA graph; blocks past the real padded length carry
block_expert = -1 and the GEMM kernels return at once on them. The torch align stays the reference (and
the default under the interpreter; Plan(..., device_align=True) runs the device one there too).
"""

import torch
import triton
import triton.language as tl

from . import configs
from .activations import check_activation
from .routing import align
from .triton_common import apply_act, check_triton_inputs, dot_precision, interpreter_active, next_pow2


@triton.jit
def _store_partial(acc, pair, valid, cols, col_ok, gate_ptr, out_ptr, top_k, d,
                   HAS_GATE: tl.constexpr, ATOMIC: tl.constexpr):
    """GEMM2 epilogue: scale by the gate, then write to the buffer row `pair` or add into row `token`."""
    if HAS_GATE:
        gate = tl.load(gate_ptr + pair, mask=valid, other=0.0).to(tl.float32)
        acc = acc * gate[:, None]
    mask = valid[:, None] & col_ok[None, :]
    if ATOMIC:
        token = (pair // top_k).to(tl.int64)
        tl.atomic_add(out_ptr + token[:, None] * d + cols[None, :], acc, mask=mask, sem="relaxed")
    else:
        rows = pair.to(tl.int64)
        tl.store(out_ptr + rows[:, None] * d + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gemm1_kernel(x_ptr, w_ptr, b_ptr, h_ptr, pair_ids_ptr, block_expert_ptr, num_pairs, top_k, d, m,
                  HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    if expert < 0:  # a block past the real padded length (device align): nothing to do
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(pair_ids_ptr + rows)
    valid = pair < num_pairs  # padding slots hold the sentinel num_pairs
    token = (pair // top_k).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < m
    x_rows = x_ptr + token[:, None] * d
    w_cols = w_ptr + expert * m * d + cols[None, :] * d
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, d, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < d
        a = tl.load(x_rows + ks[None, :], mask=valid[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_cols + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + expert * m + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    acc = apply_act(acc, ACT)
    out = h_ptr + rows.to(tl.int64)[:, None] * m + cols[None, :]
    tl.store(out, acc.to(h_ptr.dtype.element_ty), mask=valid[:, None] & col_ok[None, :])


@triton.jit
def _gemm2_kernel(h_ptr, w_ptr, gate_ptr, out_ptr, pair_ids_ptr, block_expert_ptr, num_pairs, top_k, d, m,
                  HAS_GATE: tl.constexpr, ATOMIC: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    if expert < 0:  # a block past the real padded length (device align): nothing to do
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(pair_ids_ptr + rows)
    valid = pair < num_pairs
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < d
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * m
    w_cols = w_ptr + expert * m * d + cols[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, m, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < m
        a = tl.load(h_rows + ks[None, :], mask=valid[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_cols + ks[:, None] * d, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    _store_partial(acc, pair, valid, cols, col_ok, gate_ptr, out_ptr, top_k, d, HAS_GATE, ATOMIC)


@triton.jit
def _fused_kernel(x_ptr, w_in_ptr, b_in_ptr, w_out_ptr, gate_ptr, out_ptr, pair_ids_ptr, block_expert_ptr,
                  num_pairs, top_k, d, m,
                  HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr, ATOMIC: tl.constexpr, ACT: tl.constexpr,
                  PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """GEMM1 + GEMM2 for one block: the whole (BLOCK_M, m) H tile stays on chip, saving its round trip."""
    pid = tl.program_id(0)
    expert = tl.load(block_expert_ptr + pid).to(tl.int64)
    if expert < 0:
        return
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(pair_ids_ptr + rows)
    valid = pair < num_pairs
    token = (pair // top_k).to(tl.int64)
    hcols = tl.arange(0, BLOCK_H)
    h_ok = hcols < m
    x_rows = x_ptr + token[:, None] * d
    w_in_cols = w_in_ptr + expert * m * d + hcols[None, :] * d
    acc = tl.zeros((BLOCK_M, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, d, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < d
        a = tl.load(x_rows + ks[None, :], mask=valid[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_in_cols + ks[:, None], mask=k_ok[:, None] & h_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_in_ptr + expert * m + hcols, mask=h_ok, other=0.0).to(tl.float32)[None, :]
    # round H to the input dtype, as the unfused path does when it stores H
    h = apply_act(acc, ACT).to(x_ptr.dtype.element_ty)
    w_out_rows = w_out_ptr + expert * m * d + hcols[:, None] * d
    for n0 in range(0, d, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < d
        b2 = tl.load(w_out_rows + cols[None, :], mask=h_ok[:, None] & col_ok[None, :], other=0.0)
        out = tl.dot(h, b2, input_precision=PRECISION)
        _store_partial(out, pair, valid, cols, col_ok, gate_ptr, out_ptr, top_k, d, HAS_GATE, ATOMIC)


@triton.jit
def _sum_slots_kernel(buf_ptr, bias_ptr, y_ptr, T, top_k, d, HAS_BIAS: tl.constexpr,
                      BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """y[t] = sum over slots of buf[t, slot] (+ b_out), in fp32, in a fixed order: deterministic."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (t < T)[:, None] & (cols < d)[None, :]
    rows = t.to(tl.int64) * top_k
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for s in range(0, top_k):
        acc += tl.load(buf_ptr + (rows + s)[:, None] * d + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cols < d, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + t.to(tl.int64)[:, None] * d + cols[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


# ---- launchers (one per stage, so the benchmark can time them separately) ----


class Plan:
    """Output of the align stage for one call.

    device_align: the Triton align (no host sync; num_padded is then the static bound, and blocks past the
    real length have block_expert -1); None = on CUDA tensors only (compiled kernels), the torch align else.
    """

    def __init__(self, expert_idx, num_experts, block_m, device_align=None):
        if device_align is None:
            device_align = expert_idx.is_cuda and not interpreter_active()
        if device_align:
            from .triton_align import align_device

            self.sorted_pair_ids, self.block_expert, self.num_padded, _ = align_device(
                expert_idx, num_experts, block_m)
        else:
            self.sorted_pair_ids, self.block_expert, self.num_padded = align(expert_idx, num_experts, block_m)
        self.num_pairs = expert_idx.numel()
        self.num_blocks = self.block_expert.numel()


def _launch_opts(cfg):
    return dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def gemm1(x, w_in, b_in, plan, top_k, act_code, cfg):
    """H (num_padded, m) in padded sorted-pair order; padding rows are left unwritten."""
    E, m, d = w_in.shape
    h = x.new_empty(plan.num_padded, m)
    block_n = min(cfg["BLOCK_N"], max(16, next_pow2(m)))  # do not waste a 128-wide tile on m=32
    grid = (plan.num_blocks, triton.cdiv(m, block_n))
    _gemm1_kernel[grid](x, w_in, x if b_in is None else b_in, h, plan.sorted_pair_ids, plan.block_expert,
                        plan.num_pairs, top_k, d, m, HAS_BIAS=b_in is not None, ACT=act_code,
                        PRECISION=dot_precision(x.dtype), BLOCK_M=cfg["BLOCK_M"], BLOCK_N=block_n,
                        BLOCK_K=cfg["BLOCK_K"], **_launch_opts(cfg))
    return h


def _partials(x, b_out, T, top_k, reduce):
    """Destination of GEMM2: the (T*k, d) slot buffer, or the fp32 (T, d) atomic target holding b_out."""
    d = x.shape[1]
    if reduce == "buffer":
        return x.new_empty(T * top_k, d)
    if b_out is None:
        return torch.zeros(T, d, dtype=torch.float32, device=x.device)
    # a fresh tensor: .contiguous() of a (1, d) expand would alias b_out itself
    return torch.empty(T, d, dtype=torch.float32, device=x.device).copy_(b_out)


def gemm2(h, w_out, expert_weight, plan, x, b_out, top_k, reduce, cfg):
    E, m, d = w_out.shape
    T = x.shape[0]
    out = _partials(x, b_out, T, top_k, reduce)
    block_k = min(cfg["BLOCK_K"], max(16, next_pow2(m)))
    grid = (plan.num_blocks, triton.cdiv(d, cfg["BLOCK_N"]))
    _gemm2_kernel[grid](h, w_out, h if expert_weight is None else expert_weight, out, plan.sorted_pair_ids,
                        plan.block_expert, plan.num_pairs, top_k, d, m, HAS_GATE=expert_weight is not None,
                        ATOMIC=reduce == "atomic", PRECISION=dot_precision(h.dtype), BLOCK_M=cfg["BLOCK_M"],
                        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=block_k, **_launch_opts(cfg))
    return out


def fused(x, w_in, b_in, w_out, b_out, expert_weight, plan, top_k, act_code, reduce, cfg):
    E, m, d = w_in.shape
    if m > configs.fused_max_m(cfg):
        raise ValueError(f"the fused kernel handles m <= {configs.fused_max_m(cfg)} with this config, got m={m}")
    out = _partials(x, b_out, x.shape[0], top_k, reduce)
    _fused_kernel[(plan.num_blocks,)](
        x, w_in, x if b_in is None else b_in, w_out, x if expert_weight is None else expert_weight, out,
        plan.sorted_pair_ids, plan.block_expert, plan.num_pairs, top_k, d, m,
        HAS_BIAS=b_in is not None, HAS_GATE=expert_weight is not None, ATOMIC=reduce == "atomic",
        ACT=act_code, PRECISION=dot_precision(x.dtype), BLOCK_M=cfg["BLOCK_M"], BLOCK_H=max(16, next_pow2(m)),
        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], **_launch_opts(cfg))
    return out


def finish(out, b_out, T, top_k, reduce, dtype):
    """Reduce stage: sum the slot buffer (adding b_out), or cast the atomic fp32 target."""
    if reduce == "atomic":
        return out if out.dtype == dtype else out.to(dtype)
    d = out.shape[1]
    y = torch.empty(T, d, dtype=dtype, device=out.device)
    block_t = 64 if interpreter_active() else 16  # the interpreter pays per program
    block_d = min(128, max(16, next_pow2(d)))
    grid = (triton.cdiv(T, block_t), triton.cdiv(d, block_d))
    _sum_slots_kernel[grid](out, out if b_out is None else b_out, y, T, top_k, d, HAS_BIAS=b_out is not None,
                            BLOCK_T=block_t, BLOCK_D=block_d)
    return y


def run_with_config(x, w_in, b_in, w_out, b_out, expert_idx, expert_weight, act_code, reduce, cfg,
                    device_align=None):
    T, top_k = expert_idx.shape
    plan = Plan(expert_idx, w_in.shape[0], cfg["BLOCK_M"], device_align)
    if cfg["FUSED"]:
        out = fused(x, w_in, b_in, w_out, b_out, expert_weight, plan, top_k, act_code, reduce, cfg)
    else:
        h = gemm1(x, w_in, b_in, plan, top_k, act_code, cfg)
        out = gemm2(h, w_out, expert_weight, plan, x, b_out, top_k, reduce, cfg)
    return finish(out, b_out, T, top_k, reduce, x.dtype)


def choose_config(x, w_in, b_in, w_out, b_out, expert_idx, expert_weight, act_code, reduce):
    E, m, d = w_in.shape
    T, top_k = expert_idx.shape
    rows_per_expert = T * top_k / E
    interp = interpreter_active()
    if interp or not configs.autotune_enabled():
        return configs.default_config(m, rows_per_expert, interp)
    cands = configs.candidate_configs(m, rows_per_expert, interp, torch.cuda.get_device_capability(x.device))
    # T is bucketed to a power of two so a new batch size does not trigger a new search
    key = f"moe:E{E}:m{m}:d{d}:k{top_k}:T{next_pow2(T)}:{str(x.dtype)[6:]}:{reduce}"

    def run(cfg):
        run_with_config(x, w_in, b_in, w_out, b_out, expert_idx, expert_weight, act_code, reduce, cfg)

    from triton.testing import do_bench

    return configs.pick_config(key, cands, run, device_name=torch.cuda.get_device_name(x.device),
                               version=triton.__version__, timer=do_bench)


def moe_ffn_triton(x, w_in, b_in, w_out, b_out, expert_idx, expert_weight=None, activation="gelu",
                   reduce="buffer", config=None, device_align=None):
    """Triton MoE FFN; inputs already validated and contiguous (see plm_kernels.api.moe_ffn).

    device_align: see Plan (None: the device align on CUDA, the torch one under the interpreter).
    """
    check_triton_inputs(x, w_in, b_in, w_out, b_out, expert_weight)
    act_code = check_activation(activation)
    T, top_k = expert_idx.shape
    if T == 0 or top_k == 0:
        y = torch.zeros_like(x)
        return y if b_out is None else y + b_out
    if config is None:
        config = choose_config(x, w_in, b_in, w_out, b_out, expert_idx, expert_weight, act_code, reduce)
    return run_with_config(x, w_in, b_in, w_out, b_out, expert_idx, expert_weight, act_code, reduce, config,
                           device_align)
