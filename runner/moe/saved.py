"""A MoEfied model saved so another run can load it (the next step of a compress chain, a comparison):

    model/              the source model (dense or ReLU-fied, pruned ones with their plan): a normal model dir
    model/experts.pt    the split: per FFN, the neuron ids of each expert
    model/routers.pt    the routers' state dicts
    model/moe.json      router kind, the share of experts per token, and each FFN's storage order of experts
                        (module.order_experts_by_use: the function is unchanged, the CPU path pads less)

`load` rebuilds exactly the model that was evaluated: the source model, MoEfied with the same split and
routers, at the same ratio, with its experts stored in the same order.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from runner.models import arch
from runner.moe import module, router

MOE_FILE = "moe.json"


def is_moe(model_dir: Path) -> bool:
    return (Path(model_dir) / MOE_FILE).exists()


def save(model_dir: Path, model: nn.Module, groups: dict, routers_state: dict, router_kind: str,
         ratio: float) -> dict:
    """Write the MoE files into `model_dir`, which already holds the source model (artifacts.save_model)."""
    model_dir = Path(model_dir)
    moes = [m for m in model.modules() if isinstance(m, module.MoEFFN)]
    torch.save(groups, model_dir / "experts.pt")
    torch.save(routers_state, model_dir / "routers.pt")
    spec = {"router": router_kind, "ratio": ratio,
            "order": [torch.argsort(m.slot).tolist() if m.reordered else None for m in moes]}
    (model_dir / MOE_FILE).write_text(json.dumps(spec))
    return spec


def load(model_dir: Path, source: nn.Module) -> nn.Module:
    """`source` (the model loaded from `model_dir`) MoEfied as it was saved."""
    model_dir = Path(model_dir)
    spec = json.loads((model_dir / MOE_FILE).read_text())
    groups = torch.load(model_dir / "experts.pt", weights_only=True)
    states = torch.load(model_dir / "routers.pt", weights_only=True)
    ffns = arch.ffns(source)
    routers = {}
    for ffn in ffns:
        routers[ffn.name] = router.build(spec["router"], ffn.w_in.weight, groups[ffn.name])
        routers[ffn.name].load_state_dict(states[ffn.name])
    module.moefy(source, ffns, groups, routers)
    module.set_ratio(source, spec["ratio"])
    moes = [m for m in source.modules() if isinstance(m, module.MoEFFN)]
    for moe, order in zip(moes, spec["order"], strict=True):
        if order is not None:
            moe.reorder_experts(torch.tensor(order))
    return source.eval()
