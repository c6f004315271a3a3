"""The student: cut from the teacher (copied layers), a fresh model of another shape, or any model, plus
the learned projection that maps its hidden states to the teacher's width when the widths differ."""

from __future__ import annotations

import torch
from torch import nn

from runner.distill.layers import kept_layers
from runner.errors import UserError
from runner.models import arch

PROJECTION = "distill_projection"  # attribute of the student holding the projection while it trains


def from_teacher(teacher: nn.Module, layers: list[int] | str) -> nn.Module:
    """DistilBERT / PKD initialisation: the teacher's embeddings, chosen layers and head, copied."""
    chosen = kept_layers(layers, arch.num_layers(teacher)["encoder"])
    return arch.keep_layers(teacher, chosen).train()


def random_like(teacher: nn.Module, layers: int, changes: dict) -> nn.Module:
    """A randomly initialised student of the teacher's family with `layers` layers and config `changes`
    (e.g. {"hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4})."""
    return arch.new_like(teacher, num_hidden_layers=layers, **changes).train()


def attach_projection(student: nn.Module, teacher: nn.Module, seed: int = 0) -> nn.Linear | None:
    """TinyBERT's W_fit: one shared Linear(d_S, d_T) on every student hidden state, only when the widths
    differ. It lives on the student while it trains (so the optimizer and checkpoints see it) and is
    removed by `detach_projection` before the student is saved. Its initialisation depends on `seed` only
    (not on what ran before, e.g. a teacher fine-tune that a resumed run skips)."""
    d_s, d_t = arch.hidden_size(student), arch.hidden_size(teacher)
    if d_s == d_t:
        return None
    projection = getattr(student, PROJECTION, None)
    if projection is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            projection = nn.Linear(d_s, d_t)
        student.add_module(PROJECTION, projection.to(next(student.parameters()).device))
    return projection


def detach_projection(student: nn.Module) -> None:
    if hasattr(student, PROJECTION):
        delattr(student, PROJECTION)


def check_pair(teacher: nn.Module, student: nn.Module, num_labels: int) -> None:
    """One-line errors for a teacher the student cannot learn from: another vocabulary or label count."""
    v_t, v_s = teacher.config.vocab_size, student.config.vocab_size
    if v_t != v_s:
        raise UserError(f"the teacher's vocabulary ({v_t} tokens) differs from the student's ({v_s}); "
                        "distil from a teacher with the same tokenizer")
    labels = getattr(teacher.config, "num_labels", None)
    if num_labels and labels != num_labels:
        raise UserError(f"the teacher predicts {labels} labels but the task has {num_labels}; "
                        "use a teacher fine-tuned on this task")


# ---------------------------------------------------------------------------------------------------------
# Diagnostics of a cut (recipes/bmcook/diagnose_layers.py, recipes/distill/diagnose_layers.py)


def dev_batches(ctx, sentences: int, batch_size: int = 64) -> list[dict]:
    """The first `sentences` rows of the task's dev split, collated as the model reads them."""
    from torch.utils.data import DataLoader

    from runner.tasks.collators import collator, model_inputs

    dev = ctx.data["validation"]
    loader = DataLoader(model_inputs(dev.select(range(min(len(dev), sentences)))), batch_size=batch_size,
                        collate_fn=collator(ctx.tokenizer, mlm=False))
    return list(loader)


def hidden_states(model: nn.Module, batches) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """Per batch, every encoder hidden state (hidden[0] = the input of layer 0, hidden[i + 1] = layer i's
    output) and the attention mask, in eval mode without gradients."""
    out = []
    with torch.no_grad(), arch.attention_scores(model) as cap:
        for batch in batches:
            model(**{k: v for k, v in batch.items() if k != "labels"})
            out.append(([h.clone() for h in cap.hidden], batch["attention_mask"]))
    return out


def relative_gap(student: list, reference: list, pairs: list[tuple[int, int]]) -> list[float]:
    """For each (i, j): ||hidden_student[i] - hidden_reference[j]|| / ||hidden_reference[j]|| over the real
    tokens of every batch (both from `hidden_states` on the same batches)."""
    gaps = []
    for i, j in pairs:
        num = den = 0.0
        for (hs, mask), (hr, _) in zip(student, reference, strict=True):
            real = mask.bool()
            num += float((hs[i] - hr[j])[real].norm() ** 2)
            den += float(hr[j][real].norm() ** 2)
        gaps.append(round((num / den) ** 0.5, 4))
    return gaps
