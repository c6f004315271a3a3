"""Sentence representation for the classifier: the family's own ([CLS] pooler / T5's </s> head) or a masked
mean over tokens (MeanPooler, what sentence-transformers checkpoints were trained for)."""

from __future__ import annotations

from torch import Tensor, nn

from runner.errors import UserError
from runner.models.arch.families import backbone, family


class MeanPooler(nn.Module):
    """Masked mean over tokens in place of BERT's [CLS] pooler: sentence-transformers checkpoints (such
    as all-MiniLM-L6-v2) were trained for mean pooling, so their [CLS] vector carries little. The mask
    is read from the backbone's call by a pre-hook, since BertPooler only receives hidden states."""

    def __init__(self, replaced: nn.Module | None = None):
        super().__init__()
        self._mask: Tensor | None = None
        # The replaced pooler's weights stay, unused, so that a saved checkpoint keeps the family's keys
        # and reloads without "newly initialized" warnings. Buffers, not parameters: nothing (a method's
        # freeze patterns, the optimizer, DDP, the trainable count) can take them for trainable weights.
        if replaced is not None:
            self.dense = nn.Module()
            for name, tensor in replaced.dense.named_parameters():
                self.dense.register_buffer(name, tensor.detach())

    def capture_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        self._mask = mask if isinstance(mask, Tensor) and mask.dim() == 2 else None

    def forward(self, hidden_states: Tensor) -> Tensor:
        mask = self._mask
        if mask is not None and mask.shape[1] > hidden_states.shape[1]:
            mask = mask[:, -hidden_states.shape[1]:]  # prefix tuning prepends its virtual keys to the mask
        if mask is None or mask.shape[:2] != hidden_states.shape[:2]:
            return hidden_states.mean(dim=1)
        mask = mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


POOLINGS = ("cls", "mean")


def set_pooling(model: nn.Module, mode: str) -> None:
    """Sentence representation for the classifier: "cls" (the family's own) or "mean" (masked mean of
    the last hidden states; BERT-family models with a pooler, e.g. BertForSequenceClassification)."""
    if mode not in POOLINGS:
        raise UserError(f"pooling '{mode}' is not one of {', '.join(POOLINGS)}")
    if mode == "cls":
        return
    body = backbone(model)
    if family(model) == "t5" or getattr(body, "pooler", None) is None:
        raise UserError(f"pooling=mean needs a BERT-style pooler; {type(model).__name__} has none "
                        "(use model.pooling=cls)")
    if isinstance(body.pooler, MeanPooler):
        return
    body.pooler = MeanPooler(body.pooler)
    body.register_forward_pre_hook(body.pooler.capture_mask, with_kwargs=True)
