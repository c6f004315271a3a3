"""Shared setup for the kernels tests.

Without a CUDA device the Triton kernels can only run in the interpreter, which is chosen
when each @triton.jit function is decorated, i.e. when kernels.triton_* is first imported.
So TRITON_INTERPRET is set here, at conftest import time, before any test module imports
them. With a CUDA device it is left alone: the `gpu` tests then compile real kernels and the
`triton_interpreter` tests skip (run them with TRITON_INTERPRET=1 explicitly).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
