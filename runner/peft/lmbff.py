"""LM-BFF prompt-based fine-tuning (Gao, Fisch, Chen, ACL 2021, arXiv 2012.15723): the input is rendered
into a cloze template and the label is read off the MLM head's scores of one label word per class at the
[MASK] position.

Template syntax (LM-BFF's): parts between `*`; `cls`, `mask`, `sep` are the tokenizer's special tokens,
`sep+` a [SEP] after which the segment id becomes 1, `sent_i` text field i, `+sent_i` with a leading
space, `sentl_i` / `+sentl_i` with its first letter lower-cased, `sent-_i` with its last character
dropped; anything else is literal text where `_` is a space. SST-2: `*cls**sent_0*_It_was*mask*.*sep+*`.

Scorers (the model the Trainer trains; forward(input_ids, attention_mask, token_type_ids, labels) gives
logits over the classes, one per label word):
    MaskVerbalizer   the MLM head's logits of the label words at [MASK] (LM-BFF)
    MaskClassifier   a linear head on the [MASK] hidden state whose rows start as the label words' input
                     embeddings, for backbones that ship no MLM head (all-MiniLM-L6-v2); an ablation,
                     not LM-BFF: it keeps the template but not the MLM prior
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import SequenceClassifierOutput

from runner.errors import UserError
from runner.models import arch

_SENT = re.compile(r"^(\+?)sent(l?)(-?)_(\d+)$")


def parse_template(template: str) -> list[tuple[str, object]]:
    """[(kind, value)]: ("special", "cls"|"mask"|"sep"|"sep+"), ("sent", (index, space, lower, drop_last)),
    ("text", str)."""
    parts = [p for p in template.split("*") if p]
    if not parts or "mask" not in parts:
        raise UserError(f"method.template={template!r} needs a *mask* part (e.g. *cls**sent_0*_It_was*mask*.*sep+*)")
    out: list[tuple[str, object]] = []
    for part in parts:
        m = _SENT.match(part)
        if part in ("cls", "mask", "sep", "sep+"):
            out.append(("special", part))
        elif m:
            out.append(("sent", (int(m.group(4)), m.group(1) == "+", m.group(2) == "l", m.group(3) == "-")))
        else:
            out.append(("text", part.replace("_", " ")))
    return out


def _sentence_text(text: str, space: bool, lower: bool, drop_last: bool) -> str:
    if drop_last:
        text = text[:-1]
    if lower and text:
        text = text[0].lower() + text[1:]
    return (" " + text) if space else text


def render(parts: list[tuple[str, object]], texts: list[str], tokenizer, max_length: int) -> dict[str, list[int]]:
    """input_ids, attention_mask, token_type_ids of one example; the sentences (not the template) are
    shortened from their end, longest first, until the whole fits max_length."""
    special = {"cls": tokenizer.cls_token_id, "mask": tokenizer.mask_token_id, "sep": tokenizer.sep_token_id,
               "sep+": tokenizer.sep_token_id}
    if None in special.values():
        raise UserError(f"the tokenizer {type(tokenizer).__name__} lacks [CLS]/[SEP]/[MASK] tokens for the template")
    pieces: list[tuple[str, list[int]]] = []  # (kind, ids); kind "sep+" switches the segment after it
    for kind, value in parts:
        if kind == "special":
            pieces.append((value, [special[value]]))
        elif kind == "sent":
            index, space, lower, drop_last = value
            if index >= len(texts):
                raise UserError(f"method.template uses sent_{index} but the task has {len(texts)} text field(s)")
            pieces.append(("sent", tokenizer.encode(_sentence_text(texts[index], space, lower, drop_last),
                                                    add_special_tokens=False)))
        else:
            pieces.append(("text", tokenizer.encode(value, add_special_tokens=False)))
    excess = sum(len(ids) for _, ids in pieces) - max_length
    while excess > 0:
        longest = max((p for p in pieces if p[0] == "sent"), key=lambda p: len(p[1]), default=None)
        if longest is None or not longest[1]:
            raise UserError(f"method.template does not fit task.max_length={max_length}")
        longest[1].pop()
        excess -= 1
    ids, segments, segment = [], [], 0
    for kind, piece in pieces:
        ids += piece
        segments += [segment] * len(piece)
        if kind == "sep+":
            segment = 1
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "token_type_ids": segments}


def label_word_ids(words: list[str], tokenizer) -> list[int]:
    """One vocabulary id per label word; a word the tokenizer splits is refused (LM-BFF scores one token)."""
    ids = []
    for word in words:
        pieces = tokenizer.encode(word, add_special_tokens=False)
        if len(pieces) != 1:
            raise UserError(f"method.label_words: '{word}' is {len(pieces)} tokens for this tokenizer; "
                            "pick words that are one token each")
        ids.append(pieces[0])
    return ids


MLM_HEAD_PREFIXES = ("cls.predictions.", "lm_head.", "generator_predictions.", "generator_lm_head.")


def has_mlm_head(model_dir: str | Path | None) -> bool | None:
    """Whether the weights in `model_dir` include an MLM head (True/False), None when that cannot be told
    (random init, or no safetensors file). Loading an MLM class from weights without one initialises the
    head at random, which would make the label-word scores noise."""
    if model_dir is None or not Path(model_dir).is_dir():
        return None
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), framework="pt") as f:
            if any(k.startswith(MLM_HEAD_PREFIXES) for k in f.keys()):
                return True
    return False


def _mask_positions(input_ids: Tensor, mask_id: int) -> Tensor:
    where = input_ids == mask_id
    if not bool((where.sum(dim=1) == 1).all()):
        raise ValueError("every prompt must hold exactly one [MASK]")
    return where.float().argmax(dim=1)


def _output(logits: Tensor, labels: Tensor | None) -> SequenceClassifierOutput:
    loss = None if labels is None else nn.functional.cross_entropy(logits, labels.long())
    return SequenceClassifierOutput(loss=loss, logits=logits)


class _Scorer(nn.Module):
    def state_dict(self, *args, **kwargs):
        # The Trainer writes checkpoints of a plain module with safetensors, which refuses tensors that share
        # memory (an MLM decoder tied to the word embeddings): repeats are saved as copies.
        state = super().state_dict(*args, **kwargs)
        seen = set()
        for name, tensor in state.items():
            if tensor.data_ptr() in seen:
                state[name] = tensor.clone()
            seen.add(tensor.data_ptr())
        return state


class MaskVerbalizer(_Scorer):
    """LM-BFF: logits[b, c] = MLM logit of label word c at the [MASK] of example b."""

    def __init__(self, mlm: nn.Module, word_ids: list[int], mask_id: int):
        super().__init__()
        self.mlm, self.mask_id = mlm, mask_id
        self.register_buffer("word_ids", torch.tensor(word_ids), persistent=False)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.mlm(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        at_mask = hidden[torch.arange(len(input_ids), device=input_ids.device), _mask_positions(input_ids, self.mask_id)]
        return _output(at_mask[:, self.word_ids], labels)


class MaskClassifier(_Scorer):
    """A linear head on the [MASK] hidden state, rows initialised from the label words' input embeddings."""

    def __init__(self, encoder: nn.Module, word_ids: list[int], mask_id: int):
        super().__init__()
        self.encoder, self.mask_id = encoder, mask_id
        table = arch.embeddings(encoder).weight
        hidden = arch.hidden_size(encoder)
        if table.shape[1] != hidden:
            raise UserError(f"head=mask_classifier: the word embeddings ({table.shape[1]}) are narrower than the "
                            f"hidden states ({hidden}); use head=mlm")
        self.head = nn.Linear(hidden, len(word_ids))
        with torch.no_grad():
            self.head.weight.copy_(table[word_ids])
            self.head.bias.zero_()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        at_mask = states[torch.arange(len(input_ids), device=input_ids.device), _mask_positions(input_ids, self.mask_id)]
        return _output(self.head(at_mask), labels)
