"""Shared setup for the kernels tests.

Without a CUDA device the Triton kernels can only run in the interpreter, which is chosen
when each @triton.jit function is decorated, i.e. when plm_kernels.triton_* is first imported.
So TRITON_INTERPRET is set here, at conftest import time, before any test module imports
them. With a CUDA device it is left alone: the `gpu` tests then compile real kernels and the
`triton_interpreter` tests skip (run them with TRITON_INTERPRET=1 explicitly).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny test shapes gain nothing from threads, and on a loaded machine OpenMP barriers with
    2 threads cost milliseconds per op. Applies to tests/kernels only; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
