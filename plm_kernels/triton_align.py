"""align() on the device in two Triton kernels: no host sync, no size-dependent allocation.

Same result as plm_kernels.routing.align (pairs sorted by expert, ascending pair id within an expert, each
expert's list padded with the sentinel T*k to a multiple of BLOCK_M), laid out in a buffer of static
length: the padded length never exceeds P + min(E, P) * (BLOCK_M - 1) for P = T*k pairs (each non-empty
expert wastes at most BLOCK_M - 1 slots), so the buffers are sized by that bound, computed from shapes
only. Blocks past the real padded length hold only sentinels and get block_expert = -1; the GEMM kernels
return at once on them. So the whole MoE forward can be captured in a CUDA graph.

  kernel 1 (_count_kernel), one program per chunk of pairs: per-chunk expert histogram -> counts[chunk, e];
           also fills its share of the id buffer with the sentinel.
  kernel 2 (_scatter_kernel), same grid: expert totals, padded starts (cumsum over experts) and the counts
           of earlier chunks give each pair's slot; the rank of a pair among the same expert's pairs of its
           chunk is a cumsum over a (TILE, E) one-hot, which keeps ascending pair order. Each program also
           writes its share of block -> expert, and program 0 the real padded length (a device scalar).

Expert ids outside [0, E) cannot raise without a host sync: such pairs are dropped (they contribute
nothing). The torch align raises on them; plm_kernels.api validates nothing on this path.
"""

import torch
import triton
import triton.language as tl

from .triton_common import interpreter_active, next_pow2

NUM_WARPS = 8  # untimed guess: both kernels work on (TILE, E_POW2) tiles


def padded_bound(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Static upper bound on align's padded length, rounded up to whole blocks."""
    raw = num_pairs + min(num_experts, num_pairs) * (block_m - 1)
    return triton.cdiv(raw, block_m) * block_m


@triton.jit
def _count_kernel(idx_ptr, counts_ptr, ids_ptr, num_pairs, num_experts, chunk, bound, fill_per_prog,
                  E_POW2: tl.constexpr, TILE: tl.constexpr):
    pid = tl.program_id(0)
    experts = tl.arange(0, E_POW2)
    hist = tl.zeros((E_POW2,), dtype=tl.int32)
    start = pid * chunk
    for s in range(0, chunk, TILE):
        offs = start + s + tl.arange(0, TILE)
        ok = (offs < num_pairs) & (offs < start + chunk)
        e = tl.load(idx_ptr + offs, mask=ok, other=-1).to(tl.int32)
        onehot = (e[:, None] == experts[None, :]) & ok[:, None]
        hist += tl.sum(onehot.to(tl.int32), axis=0)
    tl.store(counts_ptr + pid * E_POW2 + experts, hist)
    # the sentinel everywhere; kernel 2 (a later launch, so ordered after this one) overwrites real slots
    fill_start = pid * fill_per_prog
    for f in range(0, fill_per_prog, TILE):
        pos = fill_start + f + tl.arange(0, TILE)
        tl.store(ids_ptr + pos, tl.full((TILE,), 0, tl.int32) + num_pairs,
                 mask=(pos < bound) & (pos < fill_start + fill_per_prog))


@triton.jit
def _scatter_kernel(idx_ptr, counts_ptr, ids_ptr, block_expert_ptr, total_ptr, num_pairs, num_experts, chunk,
                    num_chunks, num_blocks, blocks_per_prog,
                    BLOCK_M: tl.constexpr, E_POW2: tl.constexpr, TILE: tl.constexpr, ROWS: tl.constexpr):
    pid = tl.program_id(0)
    experts = tl.arange(0, E_POW2)
    e_ok = experts < num_experts
    # expert totals, and the pairs of each expert in earlier chunks
    total = tl.zeros((E_POW2,), dtype=tl.int32)
    before = tl.zeros((E_POW2,), dtype=tl.int32)
    for r0 in range(0, num_chunks, ROWS):
        rows = r0 + tl.arange(0, ROWS)
        tile = tl.load(counts_ptr + rows[:, None] * E_POW2 + experts[None, :], mask=(rows < num_chunks)[:, None],
                       other=0)
        total += tl.sum(tile, axis=0)
        before += tl.sum(tl.where((rows < pid)[:, None], tile, 0), axis=0)
    blocks = (total + BLOCK_M - 1) // BLOCK_M
    padded = blocks * BLOCK_M
    padded_start = tl.cumsum(padded, axis=0) - padded
    # next free slot of each expert for this chunk's pairs
    slot = padded_start + before
    start = pid * chunk
    for s in range(0, chunk, TILE):
        offs = start + s + tl.arange(0, TILE)
        ok = (offs < num_pairs) & (offs < start + chunk)
        e = tl.load(idx_ptr + offs, mask=ok, other=-1).to(tl.int32)
        onehot = ((e[:, None] == experts[None, :]) & ok[:, None]).to(tl.int32)
        # rank among this tile's pairs of the same expert (0-based): inclusive cumsum at the own column - 1
        rank = tl.sum(tl.cumsum(onehot, axis=0) * onehot, axis=1) - 1
        pos = tl.sum(onehot * slot[None, :], axis=1) + rank
        keep = ok & (e >= 0) & (e < num_experts)
        tl.store(ids_ptr + pos, offs.to(tl.int32), mask=keep)
        slot += tl.sum(onehot, axis=0)
    # block -> expert: the number of experts whose blocks all end at or before block b
    block_end = tl.cumsum(blocks, axis=0)
    b0 = pid * blocks_per_prog
    for j in range(0, blocks_per_prog, TILE):
        b = b0 + j + tl.arange(0, TILE)
        done = (block_end[None, :] <= b[:, None]) & e_ok[None, :]
        expert = tl.sum(done.to(tl.int32), axis=1)
        expert = tl.where(expert < num_experts, expert, -1)  # past the real padded length
        tl.store(block_expert_ptr + b, expert, mask=(b < num_blocks) & (b < b0 + blocks_per_prog))
    if pid == 0:
        tl.store(total_ptr, tl.sum(tl.where(e_ok, padded, 0), axis=0))


def launch_shape(num_pairs: int, num_experts: int, interpreter: bool, max_chunks=None, tile=None):
    """(number of chunks, pairs per chunk, TILE, E_POW2) for the two kernels (GPU values untimed)."""
    e_pow2 = max(16, next_pow2(num_experts))
    # a (TILE, E_POW2) one-hot per step: 16k elements on a GPU (64 registers per thread at 8 warps); the
    # interpreter, paying per step, takes larger tiles
    tile = tile or max(16, min(256, (65536 if interpreter else 16384) // e_pow2))
    if max_chunks:
        target = max_chunks
    elif interpreter:
        target = 8  # the interpreter pays per program
    else:
        # about two programs per SM of an H100/H200 at large P; more would multiply kernel 2's reads of
        # the (chunks, E) count table (every program reads all of it)
        target = 256
    chunks = max(1, min(target, triton.cdiv(num_pairs, tile)))
    chunk = triton.cdiv(triton.cdiv(num_pairs, chunks), tile) * tile
    chunks = max(1, triton.cdiv(num_pairs, chunk))
    return chunks, chunk, tile, e_pow2


def align_device(expert_idx: torch.Tensor, num_experts: int, block_m: int, *, max_chunks=None, tile=None):
    """Device-side align with static output sizes.

    Returns (sorted_pair_ids int32 (bound,), block_expert int32 (bound // block_m,), bound, num_padded),
    bound = padded_bound(T*k, E, block_m) (a Python int from shapes), num_padded the real padded length as
    a 1-element int32 device tensor. sorted_pair_ids[:num_padded] and block_expert[:num_padded // block_m]
    equal plm_kernels.routing.align's outputs; the rest is the sentinel T*k and -1.
    max_chunks / tile override the launch shape (tests use them to cover many chunks and tiles).
    """
    if block_m < 1:
        raise ValueError("block_m must be positive")
    flat = expert_idx.reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    num_pairs = flat.numel()
    device = flat.device
    bound = padded_bound(num_pairs, num_experts, block_m)
    num_blocks = bound // block_m
    ids = torch.empty(bound, dtype=torch.int32, device=device)
    block_expert = torch.empty(num_blocks, dtype=torch.int32, device=device)
    total = torch.zeros(1, dtype=torch.int32, device=device)
    if num_pairs == 0:
        return ids, block_expert, bound, total
    chunks, chunk, tile, e_pow2 = launch_shape(num_pairs, num_experts, interpreter_active(), max_chunks, tile)
    counts = torch.empty(chunks, e_pow2, dtype=torch.int32, device=device)
    fill_per_prog = triton.cdiv(triton.cdiv(bound, chunks), tile) * tile
    blocks_per_prog = triton.cdiv(triton.cdiv(num_blocks, chunks), tile) * tile
    _count_kernel[(chunks,)](flat, counts, ids, num_pairs, num_experts, chunk, bound, fill_per_prog,
                             E_POW2=e_pow2, TILE=tile, num_warps=NUM_WARPS)
    rows = min(64, max(16, next_pow2(chunks)))
    _scatter_kernel[(chunks,)](flat, counts, ids, block_expert, total, num_pairs, num_experts, chunk, chunks,
                               num_blocks, blocks_per_prog, BLOCK_M=block_m, E_POW2=e_pow2, TILE=tile, ROWS=rows,
                               num_warps=NUM_WARPS)
    return ids, block_expert, bound, total
