"""Helpers shared by the kernels tests (imported by name: pytest puts this folder on sys.path)."""

import os

import torch

INTERPRETER = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on", "y")


def make_moe_problem(T, d, E, m, k, dtype=torch.float32, *, bias=True, weights=True, duplicates=False,
                     experts_used=None, seed=0, device="cpu"):
    """Random MoE FFN inputs scaled so that |y| stays O(1) (absolute tolerances then mean something)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    pool = torch.arange(E) if experts_used is None else torch.as_tensor(experts_used)
    if duplicates:
        idx = pool[torch.randint(0, len(pool), (T, k), generator=g)]
    else:
        idx = pool[torch.rand(T, len(pool), generator=g).argsort(1)[:, :k]]
    p = dict(
        x=rand(T, d),
        w_in=rand(E, m, d, scale=d**-0.5),
        b_in=rand(E, m, scale=0.3) if bias else None,
        w_out=rand(E, m, d, scale=(k * m) ** -0.5),
        b_out=rand(d, scale=0.3) if bias else None,
        expert_idx=idx.to(torch.int32),
        expert_weight=torch.rand(T, k, generator=g, dtype=torch.float64).to(torch.float32) if weights else None,
    )
    return {key: (v.to(device) if v is not None else None) for key, v in p.items()}


def make_sparse_problem(T, d, d_ff, n_active, dtype=torch.float32, *, bias=True, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)

    return dict(
        x=rand(T, d),
        w_in=rand(d_ff, d, scale=d**-0.5),
        b_in=rand(d_ff, scale=0.3) if bias else None,
        w_out_t=rand(d_ff, d, scale=n_active**-0.5),
        b_out=rand(d, scale=0.3) if bias else None,
        neuron_idx=torch.randperm(d_ff, generator=g)[:n_active].to(device),
    )


def moe_args(p):
    return (p["x"], p["w_in"], p["b_in"], p["w_out"], p["b_out"], p["expert_idx"], p["expert_weight"])


def sparse_args(p):
    return (p["x"], p["w_in"], p["b_in"], p["w_out_t"], p["b_out"], p["neuron_idx"])


TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def assert_close_to(actual, expected_f64, dtype, tol=None):
    tol = TOL[dtype] if tol is None else tol
    torch.testing.assert_close(actual.double().cpu(), expected_f64.cpu(), atol=tol, rtol=tol)
    if dtype == torch.bfloat16:
        rel = (actual.double().cpu() - expected_f64.cpu()).norm() / expected_f64.norm()
        assert rel < 1e-2, f"relative Frobenius error {rel:.3g}"
