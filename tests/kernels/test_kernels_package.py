"""`import plm_kernels` is free of side effects; the public names resolve lazily."""

import os
import subprocess
import sys

import plm_kernels


def test_import_has_no_side_effects():
    code = (
        "import os, sys\n"
        "before = dict(os.environ)\n"
        "import plm_kernels\n"
        "assert dict(os.environ) == before\n"
        "print(sorted(m for m in ('torch', 'triton', 'plm_kernels.api') if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "[]\n" and out.stderr == ""


def test_public_api_does_not_import_triton():
    code = (
        "import sys, torch, plm_kernels\n"
        "x = torch.randn(3, 8); w = torch.randn(2, 4, 8)\n"
        "plm_kernels.moe_ffn(x, w, None, w, None, torch.tensor([[0], [1], [1]]))\n"
        "plm_kernels.sparse_ffn(x, w[0], None, w[1], None, torch.tensor([0, 2]))\n"
        "print('triton' in sys.modules)\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "False\n"


def test_exports():
    for name in plm_kernels.__all__:
        assert getattr(plm_kernels, name) is not None
    assert "moe_ffn" in dir(plm_kernels)
    try:
        plm_kernels.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("expected AttributeError")


def test_sparse_token_limit_matches_the_kernel():
    from plm_kernels import api, triton_sparse

    assert api.SPARSE_TRITON_MAX_TOKENS == triton_sparse.MAX_TOKENS
