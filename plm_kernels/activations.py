"""Activation names shared by the torch and Triton paths.

Each name maps to a torch function (used by the references and the torch path) and to a
small integer code that the Triton kernels receive as a compile-time constant.
"""

import torch
import torch.nn.functional as F

# name -> Triton code; aliases share a code.
ACTIVATION_CODES = {
    "gelu": 1,  # exact erf GELU, what BERT uses
    "gelu_new": 2,  # tanh approximation (GPT-2 / HF "gelu_new")
    "gelu_tanh": 2,
    "relu": 3,
    "silu": 4,
}
ACTIVATIONS = tuple(ACTIVATION_CODES)


def check_activation(name: str) -> int:
    """Return the Triton code of `name`, or raise ValueError listing the valid names."""
    try:
        return ACTIVATION_CODES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {name!r}; valid names: {', '.join(ACTIVATIONS)}") from None


def apply_activation(h: torch.Tensor, name: str) -> torch.Tensor:
    """Out-of-place activation (any dtype, used by the fp64 references)."""
    code = check_activation(name)
    if code == 1:
        return F.gelu(h)
    if code == 2:
        return F.gelu(h, approximate="tanh")
    if code == 3:
        return F.relu(h)
    return F.silu(h)


def apply_activation_(h: torch.Tensor, name: str) -> torch.Tensor:
    """In-place activation on a workspace slice: the hot loop of the torch path must not allocate."""
    code = check_activation(name)
    if code == 1:
        return torch.ops.aten.gelu.out(h, out=h)
    if code == 2:
        return torch.ops.aten.gelu.out(h, approximate="tanh", out=h)
    if code == 3:
        return h.relu_()
    return F.silu(h, inplace=True)
