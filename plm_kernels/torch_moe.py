"""The torch path of moe_ffn and sparse_ffn: what the MoEfication module runs on CPU.

Measured on the 2-core dev CPU (BERT-base, E=96 experts of 32 neurons, k=24, T=4096, fp32):
a per-expert loop that gathers into *fresh* tensors spends most of its time in page faults
(a fresh multi-MB tensor per expert, or one 300 MB k-fold copy of x), not in the GEMMs.
Writing every gather and GEMM into one reused workspace (`out=` variants) makes the gather
~10x cheaper; what is left is close to the expert GEMMs' own cost. Token chunks of a few
thousand rows keep x and y resident in L3 when T is large (16k: 476 -> 398 ms).
"""

import functools
import itertools
import time

import torch

from .activations import apply_activation, apply_activation_
from .routing import expert_counts

# Tokens per chunk: 4096 rows of d=768..1024 fp32 (12-16 MB) stay in the 32 MB L3 measured here.
DEFAULT_CHUNK_TOKENS = 4096


# What stage timings read: wall time by default; benchmarks on a shared machine may set time.process_time
# (CPU time of this process: with one thread, the time other jobs hold the core is not counted).
stage_clock = time.perf_counter


def set_stage_clock(fn) -> None:
    global stage_clock
    stage_clock = fn


class _StageClock:
    """Adds time per stage into a dict (CPU ops are synchronous, so this is exact)."""

    def __init__(self, timings):
        self.timings = timings
        self.last = stage_clock()

    def __call__(self, stage):
        now = stage_clock()
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


# ---------------------------------------------------------------------------------------------------------
# Top-k inference path: what MoEFFN runs on CPU (each token lists k distinct experts, no gates, no grad).
#
# Measured on the 2-core dev CPU, MiniLM FFN (d 384, 48 experts of 32 neurons, k = 12), 1 thread:
# - Routing is far from balanced: at 25% the busiest expert takes ~90% of the tokens, a few none. Moving a
#   token's row to and from an expert (gather + index_add) costs about as much as its two GEMMs (~0.6 us
#   per row each on this machine), so for an expert that most tokens use it is cheaper to compute every
#   token and zero the ones not routed to it. With the experts stored busiest first
#   (MoEFFN.reorder_experts), those experts form a prefix: one dense GEMM pair over the prefix's neurons,
#   a 0/1 mask in between, and the output lands in y with no scatter ("dense" stage in the timings).
# - The rest, few tokens (one sentence): the per-expert loop issues ~5 ops per expert and a small MKL GEMM
#   costs ~10-25 us whatever its size, several times the dense FFN. A batched GEMM over experts (bmm, the
#   token lists padded to a common length) runs ~5x more FLOPs per second on these shapes; experts are cut
#   into segments of SEGMENT consecutive ones, each padded to its own longest list (two bmm per segment).
# - The rest, many tokens (a 4,096-token batch): padding would cost tens of MB of extra rows, while the
#   loop's fixed costs are small next to its GEMMs, so the loop over experts stays, with reused workspaces.
# - Both of those lose to torch._grouped_mm (one call per GEMM side over every expert's exact token list, no
#   padding, no per-expert Python; measured with torch 2.13's CPU kernels) while the experts average at most ~64 rows:
#   MiniLM at 25%, whole model, 1 x 64 tokens 0.90x -> 1.00-1.05x dense; 4 x 64 1.04x -> 1.18x; 8 x 128, where
#   only the experts after the dense prefix go this way, 1.20x -> 1.34x. Above ~100 rows per expert its
#   per-group GEMMs fall far behind MKL's (4 x 128 tokens all grouped: 0.77x), so GROUPED_ROWS = 64. With
#   few tokens in all (T * k <= 64 * E) the dense prefix and the ranks are skipped too: one stable sort of the
#   pairs by expert is the whole index.
# - Each pair's place in its expert's token list comes from a cumulative sum over a (T, E) one-hot matrix
#   (the rank of the token among the expert's tokens) instead of a stable argsort of T * k keys; tokens stay
#   ascending inside an expert, as with the sort.

SEGMENT = 8  # experts per padded segment
# Leading experts used by at least this share of the tokens are computed densely, masked. 0.35 was picked
# when the rest went through the loop or bmm; with the rest on grouped GEMMs and pair ranks, a dense expert
# must serve most tokens to pay for the rows it computes for nothing: whole MiniLM at 25%, 32-neuron
# experts, one thread, interleaved in one process (CPU clock), 0.7 vs 0.35: 8x128 1.63x vs 1.51x dense,
# 16x64 1.63x vs 1.60x, 32x128 1.52x vs 1.48x and 1.51x vs 1.46x; no prefix at all was no better than 0.7.
DENSE_SHARE = 0.7
PADDED_SLACK = 32  # padding rows per expert up to which the rest takes the padded path rather than the loop
GROUPED_ROWS = 64  # the rest takes torch._grouped_mm when its experts average at most this many rows each


def topk_ranks(expert_idx, num_experts):
    """(idx int64 (T, k), rank (T, k), counts list of E ints, onehot (T, E) long): rank[t, s] = how many
    tokens before t chose expert expert_idx[t, s]. Returns None when some token lists an expert twice (the
    one-hot then undercounts)."""
    T, k = expert_idx.shape
    idx = expert_idx.long()
    onehot = torch.zeros(T, num_experts, dtype=torch.long, device=idx.device).scatter_(1, idx, 1)
    cum = onehot.cumsum(0)
    counts = cum[-1].tolist()
    if sum(counts) != T * k:
        return None
    return idx, cum.gather(1, idx).sub_(1), counts, onehot


def padded_layout(counts, segment=SEGMENT):
    """The segmented padded layout of expert lists of lengths `counts`: (caps, each segment's longest list;
    base, the first row of each expert; total rows). Plain Python: 48 numbers cost less than 15 tensor ops."""
    caps, base, rows = [], [], 0
    for s in range(0, len(counts), segment):
        cap = max(counts[s:s + segment])
        caps.append(cap)
        for j in range(len(counts[s:s + segment])):
            base.append(rows + j * cap)
        rows += cap * len(counts[s:s + segment])
    return caps, base, rows


@functools.lru_cache(maxsize=16)
def _pair_tokens(T, k, device):
    """The token of each (token, slot) pair, t * k + s -> t; cached: every layer of a batch asks for it."""
    return torch.arange(T, device=device).repeat_interleave(k)


def dense_prefix(counts, tokens, share=DENSE_SHARE):
    """How many leading experts each have at least share * tokens tokens."""
    n = 0
    while n < len(counts) and counts[n] >= share * tokens and counts[n] > 0:
        n += 1
    return n


@functools.lru_cache(maxsize=4)
def _grouped_mm_runs(device_type):
    """Whether this torch has torch._grouped_mm (a private op) for fp32 on this device: tried once, on 2 x 4 x 4."""
    try:
        a, b = torch.ones(2, 4, device=device_type), torch.ones(1, 4, 4, device=device_type)
        out = torch._grouped_mm(a, b, offs=torch.tensor([2], dtype=torch.int32, device=device_type))
        return bool((out == 4).all())
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def grouped_mm_usable(x, m):
    """torch._grouped_mm takes fp32 rows whose strides are multiples of 16 bytes (d and m multiples of 4)."""
    return x.dtype == torch.float32 and x.shape[1] % 4 == 0 and m % 4 == 0 and _grouped_mm_runs(x.device.type)


def moe_ffn_topk_torch(x, w_in, b_in, w_out, b_out, expert_idx, activation="gelu", *, w_in_t=None,
                       dense_share=None, padded_slack=None, segment=None, grouped_rows=None, chunk_tokens=None,
                       timings=None):
    """moe_ffn for inference with top-k routing: y[t] = b_out + sum_s act(x[t] w_in[e]^T + b_in[e]) w_out[e],
    e = expert_idx[t, s] (k distinct experts per token, gates 1). Same shapes as moe_ffn.

    w_in_t: optional contiguous w_in.transpose(1, 2) (E, d, m); MKL's (b)mm runs ~1.3x faster on it than on
    the transposed view.
    dense_share: the leading experts each used by at least this share of the tokens are computed for every
    token and masked (> 1 turns this off). padded_slack: the rest takes the padded path when its padding adds
    at most this many rows per expert (the rows it computes for nothing then cost less than the loop's
    per-expert ops); 0 forces the loop unless no row is padding, a large value forces the padded path.
    grouped_rows: before either, the rest takes torch._grouped_mm (one grouped GEMM per side, no padding, no
    per-expert op) when its experts average at most this many rows and the op is usable (fp32; 0 turns it
    off). segment: experts per padded segment. chunk_tokens: tokens per chunk (each chunk routed and computed on
    its own). None: DENSE_SHARE, PADDED_SLACK, SEGMENT, DEFAULT_CHUNK_TOKENS.
    Falls back to moe_ffn_torch for gradients, half types or a token listing an expert twice.
    `timings` (a dict) receives seconds per stage: index, dense, gather, gemm1, gemm2, reduce.
    """
    if (_needs_grad(x, w_in, b_in, w_out, b_out) or x.dtype not in (torch.float32, torch.float64)
            or x.shape[0] == 0 or expert_idx.shape[1] == 0):
        return moe_ffn_torch(x, w_in, b_in, w_out, b_out, expert_idx, None, activation, timings=timings)
    if w_in_t is None:
        w_in_t = w_in.transpose(1, 2)
    dense_share = DENSE_SHARE if dense_share is None else dense_share
    padded_slack = PADDED_SLACK if padded_slack is None else padded_slack
    segment = SEGMENT if segment is None else segment
    grouped_rows = GROUPED_ROWS if grouped_rows is None else grouped_rows
    T, d = x.shape
    chunk = max(1, min(DEFAULT_CHUNK_TOKENS if chunk_tokens is None else chunk_tokens, T))
    if chunk < T:
        y = x.new_empty(x.shape)
        for start in range(0, T, chunk):
            y[start:start + chunk] = moe_ffn_topk_torch(
                x[start:start + chunk], w_in, b_in, w_out, b_out, expert_idx[start:start + chunk], activation,
                w_in_t=w_in_t, dense_share=dense_share, padded_slack=padded_slack, segment=segment,
                grouped_rows=grouped_rows, chunk_tokens=chunk, timings=timings)
        return y
    clock = _no_clock if timings is None else _StageClock(timings)
    E, m, _ = w_in.shape
    if T * expert_idx.shape[1] <= grouped_rows * E and grouped_mm_usable(x, m):
        return _all_grouped(x, w_in_t, b_in, w_out, b_out, expert_idx, activation, clock)
    ranked = topk_ranks(expert_idx, w_in.shape[0])
    if ranked is None:
        return moe_ffn_torch(x, w_in, b_in, w_out, b_out, expert_idx, None, activation, timings=timings)
    idx, rank, counts, onehot = ranked
    dense = dense_prefix(counts, T, dense_share)
    # y has one more row, a dummy target for the padded path's padding rows
    y = x.new_empty(T + 1, d)
    if dense:
        clock("index")
        w1 = w_in[:dense].reshape(dense * m, d).t()
        h = torch.mm(x, w1) if b_in is None else torch.addmm(b_in[:dense].reshape(-1), x, w1)
        apply_activation_(h, activation)
        h.view(T, dense, m).mul_(onehot[:, :dense, None].to(x.dtype))  # tokens not routed there: exactly 0
        if b_out is None:
            torch.mm(h, w_out[:dense].reshape(dense * m, d), out=y[:T])
        else:
            torch.addmm(b_out, h, w_out[:dense].reshape(dense * m, d), out=y[:T])
        clock("dense")
    elif b_out is None:
        y[:T].zero_()
    else:
        y[:T].copy_(b_out.expand(T, d))
    y[T].zero_()
    if dense < E:
        tail = counts[dense:]
        caps, base, rows = padded_layout(tail, segment)
        if sum(tail) <= grouped_rows * len(tail) and grouped_mm_usable(x, m):
            _grouped(x, w_in_t, b_in, w_out, y, idx, rank, counts, dense, activation, clock)
        elif rows <= sum(tail) + padded_slack * len(tail):
            _padded(x, w_in_t, b_in, w_out, y, idx, rank, dense, caps, base, rows, segment, activation, clock)
        else:
            _expert_loop(x, w_in_t, b_in, w_out, y, idx, rank, counts, dense, activation, clock)
    return y[:T]


def _padded(x, w_in_t, b_in, w_out, y, idx, rank, first, caps, base, rows, segment, activation, clock):
    """Experts first.. in segments of `segment`, each expert's token list padded to its segment's longest; two
    bmm per segment, one gather, one activation and one index_add into y (T + 1 rows) for all."""
    T, d = x.shape
    E, _, m = w_in_t.shape
    k = idx.shape[1]
    # dst[row] = the token of that row; padding rows -> T, the dummy output row; pairs of experts before
    # `first` (done densely) land in T trash rows after the real ones
    dst = torch.full((rows + (T if first else 0),), T, dtype=torch.long, device=x.device)
    row = torch.tensor([rows] * first + base, device=x.device)[idx]
    dst.scatter_(0, row.add_(rank).view(-1), _pair_tokens(T, k, x.device))
    dst = dst[:rows]
    src = dst.clamp_max(T - 1)  # padding rows read some real token; their output goes to the dummy row
    clock("index")
    xp = x.index_select(0, src)
    clock("gather")
    h = x.new_empty(rows, m)
    start = 0
    for s, cap in enumerate(caps):
        e0, e1 = first + s * segment, min(E, first + (s + 1) * segment)
        n = (e1 - e0) * cap
        if n == 0:
            continue
        xs, hs = xp[start:start + n].view(e1 - e0, cap, d), h[start:start + n].view(e1 - e0, cap, m)
        if b_in is None:
            torch.bmm(xs, w_in_t[e0:e1], out=hs)
        else:
            torch.baddbmm(b_in[e0:e1].unsqueeze(1), xs, w_in_t[e0:e1], out=hs)
        start += n
    apply_activation_(h, activation)
    clock("gemm1")
    yp = x.new_empty(rows, d)
    start = 0
    for s, cap in enumerate(caps):
        e0, e1 = first + s * segment, min(E, first + (s + 1) * segment)
        n = (e1 - e0) * cap
        if n:
            torch.bmm(h[start:start + n].view(e1 - e0, cap, m), w_out[e0:e1],
                      out=yp[start:start + n].view(e1 - e0, cap, d))
        start += n
    clock("gemm2")
    y.index_add_(0, dst, yp)  # rows in expert order: each token's terms are added in ascending expert id
    clock("reduce")


def _sorted_tokens(x, idx, rank, counts):
    """(tokens, starts): every (token, expert) pair's token, sorted by expert (tokens ascending inside one),
    and where each expert's list starts (E + 1 Python ints)."""
    T, k = idx.shape
    starts = list(itertools.accumulate(counts, initial=0))
    tokens = torch.empty(idx.numel(), dtype=torch.long, device=x.device)
    tokens.scatter_(0, torch.tensor(starts[:-1], device=x.device)[idx].add_(rank).view(-1),
                    _pair_tokens(T, k, x.device))
    return tokens, starts


def _grouped(x, w_in_t, b_in, w_out, y, idx, rank, counts, first, activation, clock):
    """Experts first.. through torch._grouped_mm: the rows of all their pairs, sorted by expert, in one grouped
    GEMM per side (group e = its expert's exact token list), one gather and one index_add. Few tokens (one
    sentence): ~10 ops in all instead of ~5 per expert or per padded segment."""
    tokens, starts = _sorted_tokens(x, idx, rank, counts)
    tokens = tokens[starts[first]:]
    tail = torch.tensor(counts[first:], device=x.device)
    offs = tail.cumsum(0).to(torch.int32)  # the end row of each group; empty groups are allowed
    clock("index")
    xs = x.index_select(0, tokens)
    clock("gather")
    h = torch._grouped_mm(xs, w_in_t[first:], offs=offs)
    if b_in is not None:
        h.add_(b_in[first:].repeat_interleave(tail, dim=0, output_size=tokens.numel()))
    apply_activation_(h, activation)
    clock("gemm1")
    ys = torch._grouped_mm(h, w_out[first:], offs=offs)
    clock("gemm2")
    y.index_add_(0, tokens, ys)  # rows in expert order, as the other strategies add them
    clock("reduce")


def _all_grouped(x, w_in_t, b_in, w_out, b_out, expert_idx, activation, clock):
    """Every expert through torch._grouped_mm, with no dense prefix and no ranks: one stable sort of the pairs
    by expert gives the rows (tokens ascending inside an expert), a bincount the groups. For few tokens (one
    sentence), where every op's fixed cost counts: ~12 ops per layer in all."""
    T, d = x.shape
    k = expert_idx.shape[1]
    flat = expert_idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    tokens = order.div_(k, rounding_mode="floor")
    counts = torch.bincount(flat, minlength=w_in_t.shape[0])
    offs = counts.cumsum(0).to(torch.int32)
    clock("index")
    xs = x.index_select(0, tokens)
    clock("gather")
    h = torch._grouped_mm(xs, w_in_t, offs=offs)
    if b_in is not None:
        h.add_(b_in.repeat_interleave(counts, dim=0, output_size=tokens.numel()))
    apply_activation_(h, activation)
    clock("gemm1")
    ys = torch._grouped_mm(h, w_out, offs=offs)
    clock("gemm2")
    y = x.new_zeros(T, d) if b_out is None else b_out.expand(T, d).clone()
    y.index_add_(0, tokens, ys)
    clock("reduce")
    return y


def _expert_loop(x, w_in_t, b_in, w_out, y, idx, rank, counts, first, activation, clock):
    """Experts first.. one at a time over their exact token lists, every gather and GEMM into one reused
    workspace, accumulated into y."""
    d = x.shape[1]
    m = w_in_t.shape[2]
    tokens, starts = _sorted_tokens(x, idx, rank, counts)
    rows = max(counts[first:])
    ws_x, ws_h, ws_y = x.new_empty(rows, d), x.new_empty(rows, m), x.new_empty(rows, d)
    clock("index")
    for e in range(first, len(counts)):
        n = counts[e]
        if n == 0:
            continue
        tok = tokens[starts[e]:starts[e] + n]
        xe = torch.index_select(x, 0, tok, out=ws_x[:n])
        clock("gather")
        h = ws_h[:n]
        if b_in is None:
            torch.mm(xe, w_in_t[e], out=h)
        else:
            torch.addmm(b_in[e], xe, w_in_t[e], out=h)
        apply_activation_(h, activation)
        clock("gemm1")
        ye = torch.mm(h, w_out[e], out=ws_y[:n])
        clock("gemm2")
        y.index_add_(0, tok, ye)
        clock("reduce")
