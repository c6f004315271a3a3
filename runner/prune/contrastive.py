"""Contrastive terms of CAP (Xu et al. 2022, "From Dense to Sparse: Contrastive Pruning for Better Pre-trained
Language Model Compression", arXiv 2112.07198; code AliceMind ContrastivePruning/).

While a model is pruned, its sentence representation z (L2-normalised) is pulled toward the representations
other models give the same sentence (unsupervised term) and sentences of the same label (supervised term),
against the rest. The other models are banks: the training set encoded once by the pre-trained model, by the
fine-tuned dense model, and by snapshots of the model being pruned (its earlier, less sparse states). For a
batch, the candidates are each batch row's detached z and its bank vectors, plus the bank vectors of `extra`
random training rows (the reference: 4,096 / the number of vectors per row); scores z . c / tau, the anchor's
own detached copy excluded, log-softmax over all candidates. For anchor i with positives P_i:

    term = - sum_i (1 / |P_i|) sum_{j in P_i} log p_ij  /  sum_i |P_i|

which is the reference's normalisation: it divides by the number of positive pairs on top of |P_i| (so a term
shrinks with its positive count, the supervised one by ~1 / (extra / 2) on a binary task); its loss weights
(SST-2: unsupervised 0.3, supervised 3) are tuned against that scale, so we keep it. Each bank gives its own
softmax and its own extra sample; the terms of all banks are summed. Gradients reach only the anchor z.

Bank rows are found by their unpadded token ids, like the cached teacher logits (the Trainer's shuffled
loader keeps no example index).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from runner.errors import UserError
from runner.teacher_logits import row_key

POOLINGS = ("mean", "cls")


def sentence(hidden: Tensor, attention_mask: Tensor | None, pooling: str = "mean") -> Tensor:
    """(B, H) L2-normalised sentence vectors from a last hidden state (B, L, H)."""
    if pooling == "cls":
        z = hidden[:, 0]
    elif pooling == "mean":
        if attention_mask is None:
            z = hidden.mean(1)
        else:
            m = attention_mask[..., None].to(hidden.dtype)
            z = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    else:
        raise UserError(f"method.cap_pooling must be one of {', '.join(POOLINGS)}, got '{pooling}'")
    return F.normalize(z.float(), p=2, dim=-1)


class Banks:
    """Representations of the training rows by other models: `vectors[name]` is (N, R, H) (R snapshots for
    the snapshot bank, 1 otherwise), `labels` (N,), rows found by token ids."""

    def __init__(self, keys: list[bytes], labels: Tensor):
        self.index = {key: i for i, key in enumerate(keys)}
        self.labels = labels
        self.vectors: dict[str, Tensor] = {}

    def add(self, name: str, vectors: Tensor) -> None:
        """Append (N, H) vectors to bank `name` (a new bank, or one more snapshot)."""
        vectors = vectors.float()[:, None]
        self.vectors[name] = vectors if name not in self.vectors else torch.cat([self.vectors[name], vectors], 1)

    def rows(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor | None:
        """Bank row of each batch row (by its unpadded token ids); None if any row is unknown."""
        ids = input_ids.cpu()
        mask = attention_mask.cpu().bool() if attention_mask is not None else None
        out = []
        for r in range(ids.shape[0]):
            i = self.index.get(row_key(ids[r][mask[r]] if mask is not None else ids[r]))
            if i is None:
                return None
            out.append(i)
        return torch.tensor(out)


@torch.no_grad()
def encode(model, dataset, tokenizer, batch_size: int, pooling: str, device="cpu") -> Tensor:
    """(N, H) normalised sentence vectors of `dataset` in order (eval mode: no dropout, as the reference)."""
    from torch.utils.data import DataLoader

    from runner.tasks.collators import collator, model_inputs

    was_training = model.training
    model.eval().to(device)
    loader = DataLoader(model_inputs(dataset), batch_size=batch_size, shuffle=False,
                        collate_fn=collator(tokenizer, mlm=False))
    out = []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
        out.append(sentence(hidden, batch.get("attention_mask"), pooling).cpu())
    model.train(was_training)
    return torch.cat(out)


def _term(logp: Tensor, positive: Tensor) -> Tensor:
    """The reference's normalisation (module docstring); 0 when no anchor has a positive."""
    per_anchor = positive.sum(1).clamp(min=1)
    total = positive.sum()
    if total == 0:
        return logp.new_zeros(())
    return -((logp * positive).sum(1) / per_anchor).sum() / total


def terms(z: Tensor, rows: Tensor, labels: Tensor, bank: Tensor, bank_labels: Tensor, extra: int, tau: float,
          generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(unsupervised, supervised) terms for anchors z (B, H) of training rows `rows` with `labels`, against one
    bank (N, R, H) with its labels (N,): candidates = each row's detached z and bank vectors, plus the bank
    vectors of extra // R random rows (without replacement, at most N)."""
    bank = bank.detach()  # banks are fixed targets: only the anchor learns
    n, r, _ = bank.shape
    b = z.shape[0]
    device = z.device
    k = min(max(extra // r, 0), n)
    sample = torch.randperm(n, generator=generator)[:k]
    cand = torch.cat([torch.cat([z.detach()[:, None], bank[rows].to(device)], 1).flatten(0, 1),
                      bank[sample].to(device).flatten(0, 1)])
    cand_rows = torch.cat([rows.repeat_interleave(r + 1), sample.repeat_interleave(r)]).to(device)
    cand_labels = torch.cat([labels.cpu().repeat_interleave(r + 1), bank_labels[sample].repeat_interleave(r)]).to(device)
    scores = z.float() @ cand.float().T / tau  # (B, C)
    own = torch.zeros_like(scores, dtype=torch.bool)
    own[torch.arange(b, device=device), torch.arange(b, device=device) * (r + 1)] = True
    logp = F.log_softmax(scores.masked_fill(own, -1e6), dim=1)
    unsup = (cand_rows[None] == rows.to(device)[:, None]) & ~own
    sup = (cand_labels[None] == labels.to(device)[:, None]) & ~own
    return _term(logp, unsup.float()), _term(logp, sup.float())
