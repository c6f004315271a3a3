"""LM-BFF prompt-based fine-tuning (Gao, Fisch, Chen, ACL 2021, arXiv 2012.15723).

    render every example into the template (e.g. [CLS] <sentence> It was [MASK] . [SEP])
    model = an MLM (the run's model with its MLM head, or a finished run's model: method.base_run)
    scorer: the MLM logits of one label word per class at [MASK] (head=mlm, LM-BFF), or, for a backbone
            without an MLM head, a linear head on the [MASK] state initialised from the label words'
            embeddings (head=mask_classifier, an ablation)
    zero-shot: evaluate the untrained scorer (the prompt alone) on test (k-shot) or validation
    fine-tune the whole model with cross-entropy over the label words (HF Trainer)
    evaluate on validation (k-shot: the K-per-class dev set) and, for k-shot tasks, on test (the original dev)
    save the model, and the prompt (template, label words, head) beside it
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import torch

from runner import artifacts
from runner.errors import UserError
from runner.evaluation import evaluate
from runner.models import weights_path
from runner.peft import lmbff
from runner.train import fit


@dataclass
class Config:
    """Mirror of conf/method/prompt.yaml."""

    name: str = "prompt"
    template: str = "*cls**sent_0*_It_was*mask*.*sep+*"
    label_words: list[str] = field(default_factory=lambda: ["terrible", "great"])
    head: Literal["mlm", "mask_classifier"] = "mlm"
    base_run: str | None = None
    save_model: bool = True


def run(ctx) -> dict:
    cfg: Config = ctx.method
    task, tokenizer = ctx.task, ctx.tokenizer
    if task.is_mlm or task.is_regression:
        raise UserError(f"method=prompt scores label words for classification tasks; {task.name} is "
                        f"{'masked LM' if task.is_mlm else 'regression'} (use method=finetune)")
    if ctx.model_cfg.family == "t5":
        raise UserError("method=prompt needs a BERT-family encoder with a [MASK] token; T5 has no MLM head "
                        "(use model=tiny-bert, tiny-roberta, tiny-electra or minilm with head=mask_classifier)")
    if len(cfg.label_words) != task.num_labels:
        raise UserError(f"method.label_words={cfg.label_words} has {len(cfg.label_words)} words; "
                        f"{task.name} has {task.num_labels} classes (one word per class, in label order)")
    kind = "mlm" if cfg.head == "mlm" else "base"
    source = artifacts.finished_run(cfg.base_run, key="method.base_run") if cfg.base_run else None
    if cfg.head == "mlm" and lmbff.has_mlm_head(source or weights_path(ctx.model_cfg)) is False:
        raise UserError(f"method.head=mlm: {cfg.base_run or ctx.model_cfg.name} has no MLM head (its weights hold "
                        "none, it would start random); use method.head=mask_classifier or method.base_run=<a "
                        "pretrain run's directory>")
    words = lmbff.label_word_ids(cfg.label_words, tokenizer)
    parts = lmbff.parse_template(cfg.template)
    data = {name: prompts(ctx, parts, split) for name, split in
            (("train", task.train), ("validation", task.validation), ("test", task.test)) if split is not None}

    backbone = artifacts.load_model_dir(ctx, source, kind=kind) if source else ctx.new_model(kind=kind)
    scorer_cls = lmbff.MaskVerbalizer if cfg.head == "mlm" else lmbff.MaskClassifier
    scorer = scorer_cls(backbone, words, tokenizer.mask_token_id)

    zero_shot = evaluate(ctx, scorer, data.get("test", data["validation"]))  # LM-BFF's zero-shot row: on test
    result = fit(ctx, scorer, train_dataset=data["train"], eval_dataset=data["validation"])
    out = {"metrics": evaluate(ctx, scorer, data["validation"]), "zero_shot": zero_shot,
           "best": result["best"], "train": result["train"]}
    if "test" in data:  # k-shot: the original validation split is the test set (LM-BFF)
        out["test"] = evaluate(ctx, scorer, data["test"])
    if cfg.save_model:
        path = artifacts.save_model(ctx, backbone, ctx.run_dir)
        prompt = {"template": cfg.template, "label_words": cfg.label_words, "label_ids": words, "head": cfg.head}
        (path / "prompt.json").write_text(json.dumps(prompt, indent=1))
        if cfg.head == "mask_classifier":
            torch.save(scorer.head.state_dict(), path / "prompt_head.pt")
    return out


def prompts(ctx, parts, split):
    """The split rendered into the template: input_ids, attention_mask, (token_type_ids), labels."""
    tokenizer, fields = ctx.tokenizer, ctx.task.text_fields
    # segment ids as LM-BFF sets them (*sep+*) for BERT and ELECTRA; RoBERTa has a single segment embedding
    segments = "token_type_ids" in tokenizer.model_input_names and ctx.model_cfg.family != "roberta"

    def encode(row):
        encoded = lmbff.render(parts, [row[f] for f in fields], tokenizer, ctx.task_cfg.max_length)
        if not segments:
            encoded.pop("token_type_ids")
        encoded["labels"] = row["label"]
        return encoded

    return split.map(encode, remove_columns=split.column_names, desc="render prompts")
