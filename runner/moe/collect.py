"""FFN inputs over training tokens, gathered with forward hooks on each FFN's input module (through arch).

Only inputs are stored (float16, padding tokens excluded); activations are recomputed from them on demand
with FFN.hidden, which is exact and costs far less memory than storing (tokens, d_ff) per layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

STORE_DTYPE = torch.float16


@torch.no_grad()
def collect_inputs(model, ffns, batches: Iterable[dict], max_tokens: int) -> dict[str, Tensor]:
    """{ffn.name: (n, d) inputs} over the first `max_tokens` non-padding tokens of `batches`.

    Each batch is a model-input dict with an attention_mask. T5 decoder FFNs see the decoder sequence,
    which T5ForSequenceClassification builds by shifting input_ids right: same length, so the same mask
    keeps its real positions (the start token and the first len-1 tokens).
    """
    mask: dict[str, Tensor] = {}
    store: dict[str, list[Tensor]] = {f.name: [] for f in ffns}

    def hook_for(name: str):
        def hook(module, args, output):
            x = args[0]
            m = mask["current"]
            rows = x[m] if x.shape[:-1] == m.shape else x.reshape(-1, x.shape[-1])
            store[name].append(rows.to("cpu", STORE_DTYPE))
        return hook

    handles = [f.input_module.register_forward_hook(hook_for(f.name)) for f in ffns]
    device = next(model.parameters()).device
    seen = 0
    try:
        model.eval()
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            mask["current"] = batch["attention_mask"].bool()
            model(**batch)
            seen += int(mask["current"].sum())
            if seen >= max_tokens:
                break
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(parts)[:max_tokens] for name, parts in store.items()}


@torch.no_grad()
def hidden_blocks(ffn, inputs: Tensor, block: int = 4096) -> Iterator[Tensor]:
    """The FFN's inner activations (n, d_ff) for stored inputs, in blocks of `block` tokens (float32)."""
    dtype = ffn.w_in.weight.dtype
    for start in range(0, inputs.shape[0], block):
        yield ffn.hidden(inputs[start:start + block].to(ffn.w_in.weight.device, dtype)).float().cpu()
