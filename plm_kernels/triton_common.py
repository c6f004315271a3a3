"""Pieces shared by the Triton kernels. Importing this module imports triton."""

import torch
import triton
import triton.language as tl
from triton import knobs


def interpreter_active() -> bool:
    """True when TRITON_INTERPRET is on: the kernels were decorated as interpreted functions."""
    return bool(knobs.runtime.interpret)


def check_triton_inputs(*tensors):
    """The interpreter runs on CPU tensors; compiled kernels need CUDA tensors."""
    on_cuda = [t.is_cuda for t in tensors if t is not None]
    if interpreter_active():
        if any(t is not None and t.dtype == torch.bfloat16 for t in tensors):
            # numpy has no bf16: the interpreter returns garbage for it (triton#11584)
            raise NotImplementedError("bf16 is not supported under TRITON_INTERPRET=1; use fp16 or fp32")
        return
    if not all(on_cuda):
        raise ValueError("the Triton path needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")


def dot_precision(dtype: torch.dtype):
    """tl.dot input precision: follow torch's TF32 switch for fp32, let Triton pick for half types."""
    if dtype != torch.float32:
        return None
    if not interpreter_active() and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@triton.jit
def apply_act(h, ACT: tl.constexpr):
    """Activation on an fp32 tile; codes from plm_kernels.activations.ACTIVATION_CODES."""
    if ACT == 1:  # exact GELU
        h = 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))
    elif ACT == 2:  # tanh GELU, using 0.5 * (1 + tanh(u)) == sigmoid(2u)
        u = 0.7978845608028654 * (h + 0.044715 * h * h * h)
        h = h * tl.sigmoid(2.0 * u)
    elif ACT == 3:
        h = tl.maximum(h, 0.0)
    elif ACT == 4:
        h = h * tl.sigmoid(h)
    return h
