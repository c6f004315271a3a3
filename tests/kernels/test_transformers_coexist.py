"""Our package is importable as `kernels`, the name of HF's kernel-hub package that transformers probes.

transformers' is_kernels_available() does find_spec("kernels") and then looks up a version:
first a distribution named "kernels" (none here), then the distributions that ship the
import name (plm-runner 0.1.0), and as a last resort `kernels.__version__`. Every route
gives 0.1.0, outside the accepted [0.18.2, 0.19), so transformers never imports from it.
"""

import importlib.metadata
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

HERE = os.path.dirname(__file__)


def test_transformers_does_not_take_our_package_for_hf_kernels():
    assert importlib.util.find_spec("kernels") is not None  # the name is ours
    assert importlib.metadata.version("plm-runner") == "0.1.0"
    assert transformers.utils.is_kernels_available() is False


def test_version_fallback_also_rejects_our_package():
    import kernels

    # what transformers reads when no distribution metadata is found
    assert kernels.__version__ == importlib.metadata.version("plm-runner")
    from packaging import version
    from transformers.utils.import_utils import KERNELS_MAX_VERSION, KERNELS_MIN_VERSION

    v = version.parse(kernels.__version__)
    assert not version.parse(KERNELS_MIN_VERSION) <= v < version.parse(KERNELS_MAX_VERSION)


def test_bert_forward_pass_with_our_package_installed():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertModel(config).eval()
    ids = torch.randint(0, 100, (2, 10))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert out.last_hidden_state.shape == (2, 10, 32)
    assert torch.isfinite(out.last_hidden_state).all()
    # asking for hub kernels fails with transformers' own clear message, not inside our package
    with pytest.raises(ValueError, match="Kernels are not available"):
        model.set_use_kernels(True)


def test_fresh_process_import_does_not_touch_our_package():
    # transformers must not import `kernels` while importing or building a model
    code = (
        "import sys, torch, transformers\n"
        "from transformers import BertConfig, BertModel\n"
        "m = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,"
        " num_attention_heads=2, intermediate_size=32))\n"
        "m(input_ids=torch.zeros(1, 4, dtype=torch.long))\n"
        "print(transformers.utils.is_kernels_available(), 'kernels' in sys.modules)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
