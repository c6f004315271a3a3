"""Public entry points: argument checks, then dispatch to the torch or the Triton path."""

import torch

from .activations import check_activation
from .torch_moe import moe_ffn_torch, sparse_ffn_torch

IMPLS = ("auto", "torch", "triton")
REDUCES = ("buffer", "atomic")
# = triton_sparse.MAX_TOKENS, repeated here so that dispatching does not import triton
SPARSE_TRITON_MAX_TOKENS = 16


def _contig(t):
    return None if t is None else t.contiguous()


def _check_choice(name, value, valid):
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(valid)}; got {value!r}")


def _check_shape(name, t, shape):
    if t is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _no_backward(impl, *tensors):
    """True when autograd must see this call; the Triton path then is refused (forced) or skipped (auto)."""
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors):
        return False
    if impl == "triton":
        raise NotImplementedError("the Triton kernels have no backward; use impl='torch' or torch.no_grad()")
    return True


def _check_dtypes(x, *tensors):
    for t in tensors:
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"weights and biases must have the dtype of x ({x.dtype}), got {t.dtype}")


def _use_triton(impl, x):
    return impl == "triton" or (impl == "auto" and x.is_cuda)


def moe_ffn(x, w_in, b_in, w_out, b_out, expert_idx, expert_weight=None, *, activation="gelu",
            reduce="buffer", impl="auto"):
    """Mixture-of-experts FFN: y[t] = b_out + sum_s g[t,s] * act(x[t] @ w_in[e].T + b_in[e]) @ w_out[e],
    with e = expert_idx[t, s] and g = expert_weight (1.0 when None).

    x (T, d); w_in (E, m, d) (nn.Linear rows, experts contiguous); b_in (E, m) or None;
    w_out (E, m, d) (output projection transposed, W_out[:, perm].T.reshape(E, m, d));
    b_out (d,) or None, added once per token; expert_idx (T, k) integer; expert_weight (T, k) or None.
    A token may list an expert twice (it is then counted twice).
    reduce: "buffer" (deterministic slot sum) or "atomic" (fp32 atomics); Triton path only.
    On CUDA the Triton path aligns on the device without a host sync (CUDA-graph capturable), so it does
    not check expert ids: ids outside [0, E) are dropped there (the torch path raises).
    impl: "auto" (Triton on CUDA tensors, torch on CPU), "torch" or "triton". When gradients are
    needed, "auto" takes the torch path (autograd-friendly ops); the Triton kernels are forward-only.
    """
    check_activation(activation)
    _check_choice("reduce", reduce, REDUCES)
    _check_choice("impl", impl, IMPLS)
    if x.dim() != 2 or w_in.dim() != 3:
        raise ValueError(f"x must be (T, d) and w_in (E, m, d); got {tuple(x.shape)} and {tuple(w_in.shape)}")
    T, d = x.shape
    E, m, d_w = w_in.shape
    if d_w != d:
        raise ValueError(f"w_in rows have {d_w} features, x has {d}")
    _check_shape("w_out", w_out, (E, m, d))
    _check_shape("b_in", b_in, (E, m))
    _check_shape("b_out", b_out, (d,))
    if expert_idx.dim() != 2 or expert_idx.shape[0] != T:
        raise ValueError(f"expert_idx must be (T={T}, k), got {tuple(expert_idx.shape)}")
    if expert_idx.dtype.is_floating_point or expert_idx.dtype == torch.bool:
        raise ValueError(f"expert_idx must be an integer tensor, got {expert_idx.dtype}")
    _check_shape("expert_weight", expert_weight, expert_idx.shape)
    _check_dtypes(x, w_in, b_in, w_out, b_out)
    args = (x, w_in, b_in, w_out, b_out)
    if _no_backward(impl, x, *args[1:], expert_weight):
        impl = "torch"  # the Triton kernels have no backward: train through the torch path
    if _use_triton(impl, x):
        from .triton_moe import moe_ffn_triton  # imports triton: only on this path

        return moe_ffn_triton(*map(_contig, args), expert_idx.contiguous(), _contig(expert_weight),
                              activation, reduce)
    return moe_ffn_torch(*args, expert_idx, expert_weight, activation)


def sparse_ffn(x, w_in, b_in, w_out_t, b_out, neuron_idx, activation="gelu", *, impl="auto"):
    """Activation-sparse FFN over the active neurons `neuron_idx` (one index set for the batch):
    y = act(x @ w_in[idx].T + b_in[idx]) @ w_out_t[idx] + b_out.

    x (T, d); w_in (d_ff, d); b_in (d_ff,) or None; w_out_t (d_ff, d) (output projection
    transposed); b_out (d,) or None; neuron_idx (n,) integer. impl="auto" uses the Triton
    gather-GEMV kernels for CUDA tensors with T <= 16 and the torch path otherwise.
    """
    check_activation(activation)
    _check_choice("impl", impl, IMPLS)
    if x.dim() != 2 or w_in.dim() != 2:
        raise ValueError(f"x must be (T, d) and w_in (d_ff, d); got {tuple(x.shape)} and {tuple(w_in.shape)}")
    d_ff, d = w_in.shape
    if x.shape[1] != d:
        raise ValueError(f"w_in rows have {d} features, x has {x.shape[1]}")
    _check_shape("w_out_t", w_out_t, (d_ff, d))
    _check_shape("b_in", b_in, (d_ff,))
    _check_shape("b_out", b_out, (d,))
    _check_dtypes(x, w_in, b_in, w_out_t, b_out)
    if neuron_idx.dim() != 1 or neuron_idx.dtype.is_floating_point:
        raise ValueError("neuron_idx must be a 1-D integer tensor")
    if neuron_idx.numel():
        lo, hi = torch.aminmax(neuron_idx)
        if int(lo) < 0 or int(hi) >= d_ff:  # the kernels would read out of bounds
            raise ValueError(f"neuron_idx must lie in [0, {d_ff})")
    if _no_backward(impl, x, w_in, b_in, w_out_t, b_out):
        impl = "torch"
    if impl == "triton" or (impl == "auto" and x.is_cuda and x.shape[0] <= SPARSE_TRITON_MAX_TOKENS):
        from .triton_sparse import sparse_ffn_triton

        return sparse_ffn_triton(x.contiguous(), w_in.contiguous(), _contig(b_in), w_out_t.contiguous(),
                                 _contig(b_out), neuron_idx, activation)
    return sparse_ffn_torch(x, w_in, b_in, w_out_t, b_out, neuron_idx, activation)
