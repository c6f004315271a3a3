"""MoE and activation-sparse FFN kernels (torch path for CPU, Triton for CUDA).

Importing this package has no side effects: no torch or triton import, no environment
changes. Names are resolved on first access (PEP 562), and only the Triton path imports
triton. The package is not called `kernels`: that import name belongs to HF's kernel-hub package,
a hard dependency of transformers >= 5.25 (see tests/kernels/test_hub_kernels_coexist.py).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "moe_ffn": "api",
    "sparse_ffn": "api",
    "route_topk": "routing",
    "align": "routing",
    "ACTIVATIONS": "activations",
    "moe_ffn_torch": "torch_moe",
    "sparse_ffn_torch": "torch_moe",
    "moe_ffn_dense_oracle": "reference",
    "moe_ffn_loop_reference": "reference",
    "sparse_ffn_reference": "reference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'plm_kernels' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
