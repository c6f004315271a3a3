"""Our kernels package is `plm_kernels`, so the import name `kernels` stays HF's kernel-hub package.

transformers 5.25 made the hub package (import name `kernels`) a hard dependency and imports it from
transformers.integrations.hub_kernels whenever Trainer or a model is loaded. A top-level package of
ours called `kernels` shadowed it and broke every import (ImportError: CUDAProperties). These tests
pin the contract whichever transformers is installed: the name `kernels` never resolves into this
repository, and transformers loads and runs next to plm_kernels.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_import_name_kernels_is_not_ours():
    spec = importlib.util.find_spec("kernels")
    # HF's hub package (a hard dependency of transformers >= 5.25), nothing, or, with tests/ on sys.path and no
    # hub package installed, the namespace portion tests/kernels (origin None: it shadows nothing)
    if spec is not None and spec.origin is not None:
        origin = Path(spec.origin).resolve()
        # an installed package is never ours, even when the venv sits inside the checkout (make setup's .venv)
        installed = any(part in ("site-packages", "dist-packages") for part in origin.parts)
        assert installed or not origin.is_relative_to(REPO), f"`kernels` resolves into this repository: {origin}"
    import plm_kernels

    assert Path(plm_kernels.__file__).resolve().parent == REPO / "plm_kernels"


def test_transformers_trainer_and_our_package_load_together():
    pytest.importorskip("transformers")
    # a fresh process: what `python -m runner` does (Trainer, a BERT forward, our MoE op)
    code = (
        "import torch, plm_kernels\n"
        "from transformers import BertConfig, BertModel, Trainer\n"
        "m = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,"
        " num_attention_heads=2, intermediate_size=32)).eval()\n"
        "h = m(input_ids=torch.zeros(1, 4, dtype=torch.long)).last_hidden_state\n"
        "assert torch.isfinite(h).all()\n"
        "x = torch.randn(4, 8); w_in = torch.randn(2, 4, 8); w_out = torch.randn(2, 4, 8)\n"
        "idx = torch.tensor([[0], [1], [0], [1]])\n"
        "y = plm_kernels.moe_ffn(x, w_in, None, w_out, None, idx, impl='torch')\n"
        "print(list(y.shape))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[4, 8]"
