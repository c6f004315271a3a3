"""The MoE FFN (computes only the selected experts, through kernels.moe_ffn) and the dense -> MoE conversion.

Conversion of one FFN with a split `groups` (E, m):
    perm = groups.flatten(); W_in <- W_in[perm]; b_in <- b_in[perm]; W_out <- W_out[:, perm]
    (the dense function is unchanged: the same neurons, in another order), after which expert e is the
    contiguous block of neurons e*m .. e*m+m-1, stored as the kernel wants it:
    w_in (E, m, d) = W_in.view(E, m, d),  w_out (E, m, d) = W_out.T.reshape(E, m, d).
The module then replaces the FFN through arch (FFN.replace), so dropout, residual and LayerNorm around it
stay as they were. It is an inference module: T5's inner dropout is not applied.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from runner.errors import UserError
from runner.moe.router import active_experts

# HF activation names (arch FFN.activation) -> kernels.moe_ffn activation names
KERNEL_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_tanh",
                      "silu": "silu", "swish": "silu"}


def kernel_activation(name: str) -> str:
    if name not in KERNEL_ACTIVATIONS:
        raise UserError(f"FFN activation '{name}' has no MoE kernel; supported: {', '.join(KERNEL_ACTIVATIONS)} "
                        "(or set method.relufy=true to switch the model to ReLU first)")
    return KERNEL_ACTIVATIONS[name]


class MoEFFN(nn.Module):
    """y = b_out + sum over the router's top-k experts e of act(x W_in[e]^T + b_in[e]) W_out[e]."""

    def __init__(self, w_in: Tensor, b_in: Tensor | None, w_out: Tensor, b_out: Tensor | None, activation: str,
                 act: nn.Module, router: nn.Module, k: int):
        super().__init__()
        self.w_in = nn.Parameter(w_in.contiguous(), requires_grad=False)
        self.b_in = None if b_in is None else nn.Parameter(b_in.contiguous(), requires_grad=False)
        self.w_out = nn.Parameter(w_out.contiguous(), requires_grad=False)
        self.b_out = None if b_out is None else nn.Parameter(b_out.contiguous(), requires_grad=False)
        self.activation = activation  # kernels name
        self.act = act                # the HF activation module (the oracle router's dense hidden layer)
        self.router = router
        self.k = k

    @property
    def num_experts(self) -> int:
        return self.w_in.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        import kernels

        tokens = x.reshape(-1, x.shape[-1])
        expert_idx = torch.topk(self.router(tokens, self), self.k, dim=1, sorted=False).indices
        y = kernels.moe_ffn(tokens, self.w_in, self.b_in, self.w_out, self.b_out, expert_idx,
                            activation=self.activation)
        return y.view(x.shape)

    def extra_repr(self) -> str:
        num_experts, size, d = self.w_in.shape
        return f"experts={num_experts}, expert_size={size}, d={d}, k={self.k}, activation={self.activation}"


@torch.no_grad()
def permute_neurons(ffn, perm: Tensor) -> None:
    """Reorder one dense FFN's neurons in place (rows of W_in and b_in, columns of W_out)."""
    perm = perm.to(ffn.w_in.weight.device)
    ffn.w_in.weight.copy_(ffn.w_in.weight[perm])
    if ffn.w_in.bias is not None:
        ffn.w_in.bias.copy_(ffn.w_in.bias[perm])
    ffn.w_out.weight.copy_(ffn.w_out.weight[:, perm])


@torch.no_grad()
def to_moe(ffn, groups: Tensor, router: nn.Module, k: int) -> MoEFFN:
    """Replace one arch FFN by an MoEFFN whose expert e holds the neurons groups[e]."""
    if ffn.gated:
        raise UserError(f"{ffn.name} is a gated FFN (T5 v1.1 style act(W_g x) * W_in x); MoEfication supports "
                        "plain FFNs only: use a model with feed_forward_proj=relu/gelu")
    activation = kernel_activation(ffn.activation)
    num_experts, size = groups.shape
    permute_neurons(ffn, groups.flatten())
    d = ffn.w_in.weight.shape[1]
    w_in = ffn.w_in.weight.view(num_experts, size, d)
    b_in = None if ffn.w_in.bias is None else ffn.w_in.bias.view(num_experts, size)
    w_out = ffn.w_out.weight.t().reshape(num_experts, size, -1)
    module = MoEFFN(w_in.clone(), None if b_in is None else b_in.clone(), w_out.clone(),
                    None if ffn.w_out.bias is None else ffn.w_out.bias.clone(), activation, ffn.act_fn(),
                    router.to(ffn.w_in.weight.device), k)
    ffn.replace(module)
    return module


def moefy(model, ffns, groups: dict[str, Tensor], routers: dict[str, nn.Module], ratio: float = 1.0) -> None:
    """Convert every FFN in `ffns` (arch.ffns(model), read before any replacement)."""
    for ffn in ffns:
        to_moe(ffn, groups[ffn.name], routers[ffn.name], active_experts(groups[ffn.name].shape[0], ratio))


def set_ratio(model, ratio: float) -> list[int]:
    """Use round(ratio * E) experts per token in every MoE FFN of `model`; returns each layer's k."""
    ks = []
    for module in model.modules():
        if isinstance(module, MoEFFN):
            module.k = active_experts(module.num_experts, ratio)
            ks.append(module.k)
    return ks
