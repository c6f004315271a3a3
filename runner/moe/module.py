"""The MoE FFN (computes only the selected experts, through plm_kernels.moe_ffn) and the dense -> MoE conversion.

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
from runner.moe.router import GroundTruthRouter, MLPRouter, active_experts

# HF activation names (arch FFN.activation) -> plm_kernels.moe_ffn activation names
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
        self.timings: dict[str, float] | None = None  # a dict: seconds per stage are added to it (benchmarks)
        # CPU: "topk" (plm_kernels.torch_moe.moe_ffn_topk_torch) or "general" (moe_ffn_torch, the argsort + per-expert
        # loop that ran before; kept so benchmarks can time both side by side). Same outputs up to fp32 rounding.
        self.cpu_path = "topk"
        # slot[e] = where the router's expert e is stored; the identity until reorder_experts (for the speed of
        # the CPU path only: the set of experts a token gets, hence the output, does not change)
        self.register_buffer("slot", torch.arange(w_in.shape[0]))
        self.reordered = False
        self._w_in_t = (None, None)  # (key, tensor): w_in.transpose(1, 2) made contiguous, for the CPU path

    @property
    def num_experts(self) -> int:
        return self.w_in.shape[0]

    def scores(self, tokens: Tensor) -> Tensor:
        """The router's (T, E) scores; the MLP router's ops written out without F.normalize's expand_as
        (bitwise the same scores, one copy of the input fewer)."""
        r = self.router
        if type(r) is MLPRouter and not torch.is_grad_enabled():
            unit = tokens / torch.linalg.vector_norm(tokens, dim=-1, keepdim=True).clamp_min_(1e-12)
            return torch.addmm(r.fc2.bias, torch.tanh_(unit @ r.fc1.weight.t()), r.fc2.weight.t())
        return r(tokens, self)

    def w_in_t(self) -> Tensor:
        """w_in as (E, d, m), contiguous (MKL runs the first GEMM ~1.3x faster on it than on the transposed
        view); recomputed whenever w_in changes (moved, reloaded, reordered)."""
        key = (self.w_in.data_ptr(), self.w_in._version)
        if self._w_in_t[0] != key:
            self._w_in_t = (key, self.w_in.detach().transpose(1, 2).contiguous())
        return self._w_in_t[1]

    def forward(self, x: Tensor) -> Tensor:
        import plm_kernels
        from plm_kernels import torch_moe

        tokens = x.reshape(-1, x.shape[-1])
        timings = self.timings
        t0 = torch_moe.stage_clock() if timings is not None else 0.0
        scores = self.scores(tokens)
        if timings is not None:
            t1 = torch_moe.stage_clock()
            timings["router"] = timings.get("router", 0.0) + t1 - t0
        expert_idx = torch.topk(scores, self.k, dim=1, sorted=False).indices
        if self.reordered:
            expert_idx = self.slot[expert_idx]
        if timings is not None:
            timings["topk"] = timings.get("topk", 0.0) + torch_moe.stage_clock() - t1
        args = (tokens, self.w_in, self.b_in, self.w_out, self.b_out, expert_idx)
        if x.is_cuda:
            y = plm_kernels.moe_ffn(*args, activation=self.activation)
        elif self.cpu_path == "general":
            y = torch_moe.moe_ffn_torch(*args, None, self.activation, timings=timings)
        else:  # top-k experts are distinct and ungated; with gradients it falls back to moe_ffn_torch
            y = torch_moe.moe_ffn_topk_torch(*args, self.activation, w_in_t=self.w_in_t(), timings=timings)
        return y.view(x.shape)

    @torch.no_grad()
    def reorder_experts(self, order: Tensor) -> None:
        """Store expert order[j] in slot j (the function is unchanged). The CPU path pads the token lists of
        consecutive experts to a common length, so storing the busiest experts first wastes the fewest rows.
        Not for the oracle router, which scores experts in storage order."""
        if isinstance(self.router, GroundTruthRouter):
            raise ValueError("the gt router scores the experts as stored; reordering would change its choices")
        order = order.to(self.slot.device)
        if not torch.equal(order.sort().values, torch.arange(self.num_experts, device=order.device)):
            raise ValueError(f"order must be a permutation of the {self.num_experts} experts")
        stored = self.slot[order]  # where each expert of the new order is stored now
        for p in (self.w_in, self.b_in, self.w_out):
            if p is not None:
                p.copy_(p[stored])
        self.slot.copy_(torch.argsort(order))
        self.reordered = not torch.equal(self.slot, torch.arange(self.num_experts, device=self.slot.device))

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


@torch.no_grad()
def order_experts_by_use(model, batches) -> int:
    """Store every MoE FFN's experts busiest first, counting the router's choices on `batches` (dicts of model
    inputs, e.g. a few training batches) at each layer's current k. Outputs are unchanged; the CPU path pads
    less (plm_kernels/torch_moe.py). Layers with the oracle router are left as they are. Returns the layers
    reordered."""
    moes = [m for m in model.modules() if isinstance(m, MoEFFN) and not isinstance(m.router, GroundTruthRouter)]
    use = {m: torch.zeros(m.num_experts, dtype=torch.long) for m in moes}

    def count(moe, args):
        tokens = args[0].reshape(-1, args[0].shape[-1])
        chosen = torch.topk(moe.scores(tokens), moe.k, dim=1, sorted=False).indices  # router ids
        use[moe] += torch.bincount(chosen.reshape(-1).cpu(), minlength=moe.num_experts)

    handles = [m.register_forward_pre_hook(count) for m in moes]
    try:
        for batch in batches:
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    for m in moes:
        m.reorder_experts(torch.argsort(use[m], descending=True, stable=True))
    return len(moes)


def set_ratio(model, ratio: float) -> list[int]:
    """Use round(ratio * E) experts per token in every MoE FFN of `model`; returns each layer's k."""
    ks = []
    for module in model.modules():
        if isinstance(module, MoEFFN):
            module.k = active_experts(module.num_experts, ratio)
            ks.append(module.k)
    return ks
