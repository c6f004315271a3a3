"""Inference of a (MoEfied) model through CUDA graphs, one per batch bucket.

A CUDA graph replays a fixed sequence of kernels on fixed buffers, so every shape must be static. A batch
(b, L) is padded up to a bucket (B, L'): B the smallest of `batch_buckets` >= b, L' the length rounded up to
`length_step`. Each bucket is captured once (after warm-up calls, which also let the Triton kernels pick
their configs) and replayed afterwards; the real rows are cut from the static output. The MoE forward is
capturable because plm_kernels.moe_ffn aligns on the device (plm_kernels.triton_align) with buffers sized from
shapes only.

Padding does not change the real rows: padded positions have attention mask 0 (keys never attended) and
padded sequences are separate rows (routing, FFNs and LayerNorms are per token). A padded sequence keeps
its first position unmasked, so no softmax row is all masked.

On CPU (or with graphs=False) the same padding runs eagerly: that is how the bucketing is tested without a
GPU, against the plain model call.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from runner.errors import UserError

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LENGTH_STEP = 32


def batch_bucket(size: int, buckets=BATCH_BUCKETS) -> int:
    """The smallest bucket >= size; past the largest, the next multiple of the largest."""
    if size < 1:
        raise ValueError(f"batch size must be positive, got {size}")
    for b in sorted(buckets):
        if b >= size:
            return b
    top = max(buckets)
    return -(-size // top) * top


def length_bucket(length: int, step: int = LENGTH_STEP) -> int:
    if length < 1:
        raise ValueError(f"sequence length must be positive, got {length}")
    return -(-length // step) * step


def pad_batch(inputs: dict[str, Tensor], size: int, length: int, pad_token_id: int = 0) -> dict[str, Tensor]:
    """Pad (b, L) input tensors to (size, length): ids with pad_token_id, masks and token types with 0,
    except position 0 of every padded sequence, left unmasked (no attention row is fully masked)."""
    b, L = inputs["input_ids"].shape
    if size < b or length < L:
        raise ValueError(f"cannot pad a ({b}, {L}) batch to ({size}, {length})")
    out = {}
    for name, t in inputs.items():
        fill = pad_token_id if name == "input_ids" else 0
        padded = t.new_full((size, length), fill)
        padded[:b, :L] = t
        if name == "attention_mask":
            padded[b:, 0] = 1
        out[name] = padded
    if "attention_mask" not in out:  # the unpadded batch attended everywhere: say where the padding is
        mask = inputs["input_ids"].new_zeros((size, length))
        mask[:b, :L] = 1
        mask[b:, 0] = 1
        out["attention_mask"] = mask
    return out


def cut(output: Tensor, b: int, L: int, padded_length: int) -> Tensor:
    """The real rows of a padded output: (B, C) -> (b, C) per sequence, (B, L', ...) -> (b, L, ...) per token
    (a 3-D or larger output whose second axis is the padded length)."""
    output = output[:b]
    if output.dim() >= 3 and output.shape[1] == padded_length:
        output = output[:, :L]
    return output


class _Captured:
    def __init__(self, graph, inputs: dict[str, Tensor], output: Tensor):
        self.graph, self.inputs, self.output = graph, inputs, output


class GraphedModel:
    """Calls `model` through one CUDA graph per (batch bucket, length bucket); eager on CPU.

    model(**inputs).<output> is returned for the real rows (e.g. "logits", "last_hidden_state").
    graphs: None = on CUDA models; True on a CPU model is refused. warmup: eager calls before a capture.
    """

    def __init__(self, model: nn.Module, *, batch_buckets=BATCH_BUCKETS, length_step: int = LENGTH_STEP,
                 pad_token_id: int = 0, output: str = "logits", graphs: bool | None = None, warmup: int = 2):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        on_cuda = self.device.type == "cuda"
        if graphs and not on_cuda:
            raise UserError("CUDA graphs need the model on a CUDA device; use graphs=False (eager) on CPU")
        self.graphs = on_cuda if graphs is None else graphs
        self.batch_buckets = tuple(batch_buckets)
        self.length_step = length_step
        self.pad_token_id = pad_token_id
        self.output = output
        self.warmup = warmup
        self.captured: dict[tuple[int, int], _Captured] = {}
        self._pool = None  # one memory pool shared by all buckets' graphs

    def bucket(self, b: int, L: int) -> tuple[int, int]:
        return batch_bucket(b, self.batch_buckets), length_bucket(L, self.length_step)

    def _run(self, inputs: dict[str, Tensor]) -> Tensor:
        return getattr(self.model(**inputs), self.output)

    @torch.no_grad()
    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None, **extra: Tensor) -> Tensor:
        inputs = {"input_ids": input_ids, **extra}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        b, L = input_ids.shape
        key = self.bucket(b, L)
        padded = pad_batch(inputs, *key, self.pad_token_id)
        if not self.graphs:
            return cut(self._run(padded), b, L, key[1])
        entry = self.captured.get(key)
        if entry is None or set(entry.inputs) != set(padded):
            entry = self.captured[key] = self._capture(padded)
        for name, t in padded.items():
            entry.inputs[name].copy_(t)
        entry.graph.replay()
        return cut(entry.output, b, L, key[1]).clone()  # the static output is overwritten by the next replay

    def _capture(self, padded: dict[str, Tensor]) -> _Captured:
        static = {name: t.clone() for name, t in padded.items()}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the default stream, as torch.cuda.graphs advises
            for _ in range(self.warmup):
                self._run(static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self._run(static)
        self._pool = graph.pool()
        return _Captured(graph, static, output)
