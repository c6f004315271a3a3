"""Training throughput of `python -m runner` (finetune) vs a bare HF Trainer script, identical settings.

    python -m runner.bench trainer --data-dir ../shared/data [--train-samples 8000] [--repeats 2]

Both sides train MiniLM on the same SST-2 rows (max length 64, batch 32, lr 5e-5, 1 epoch, evaluation
each epoch, a checkpoint every 200 steps) in this one process, the order flipping every pair; the figure is the ratio of
the Trainer's own train_samples_per_second (ours / bare), so start-up and data loading are excluded.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from runner.config import compose


def ours(overrides: list[str], out: Path) -> float:
    from runner import registry
    from runner.run import make_context

    cfg = compose(overrides)
    ctx = make_context(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    result = registry.get(ctx.method.name)(ctx)
    print(f"  ours: {result['train']['train_samples_per_second']:.1f} samples/s, "
          f"accuracy {result['metrics'].get('accuracy', float('nan')):.4f}")
    return result["train"]["train_samples_per_second"]


def bare(ctx, out: Path, a) -> float:
    """What a user writes with transformers alone: tokenize, Trainer, train. Same rows, same settings."""
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from runner.models import weights_path

    set_seed(a.seed)
    tok = ctx.tokenizer
    task = ctx.task

    def encode(batch):
        return tok(batch["sentence"], truncation=True, max_length=a.max_length)

    train = task.train.map(encode, batched=True, remove_columns=["sentence"]).rename_column("label", "labels")
    val = task.validation.map(encode, batched=True, remove_columns=["sentence"]).rename_column("label", "labels")
    model = AutoModelForSequenceClassification.from_pretrained(weights_path(ctx.model_cfg), num_labels=2)

    def accuracy(p):
        return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}

    args = TrainingArguments(
        output_dir=str(out), num_train_epochs=1, per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=128, learning_rate=a.lr, weight_decay=0.01, warmup_steps=0.06,
        lr_scheduler_type="linear", eval_strategy="epoch", save_strategy="steps", save_steps=200,
        save_total_limit=2, logging_steps=20, report_to="none", seed=a.seed, data_seed=a.seed, use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      data_collator=DataCollatorWithPadding(tok), processing_class=tok, compute_metrics=accuracy)
    metrics = trainer.train().metrics
    acc = trainer.state.log_history[-2].get("eval_accuracy", float("nan"))
    print(f"  bare: {metrics['train_samples_per_second']:.1f} samples/s, accuracy {acc:.4f}")
    return metrics["train_samples_per_second"]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.bench trainer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data", help="holds glue/sst2/{train,validation}.tsv")
    p.add_argument("--train-samples", type=int, default=8000)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--repeats", type=int, default=2, help="(bare, ours) pairs; the order flips every pair")
    a = p.parse_args(argv)
    overrides = [
        "task=glue/sst2", f"data_dir={Path(a.data_dir).resolve()}", f"task.max_train_samples={a.train_samples}",
        f"task.max_length={a.max_length}", f"train.batch_size={a.batch_size}", f"train.lr={a.lr}",
        "train.epochs=1", "train.eval_batch_size=128", "train.save_steps=200", f"seed={a.seed}",
        # The bare script's AutoModelForSequenceClassification pools with [CLS]: same model on both sides.
        "model.pooling=cls",
    ]
    from runner.run import make_context

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ctx = make_context(compose(overrides), tmp / "bare-ctx")
        ours_sps, bare_sps = [], []
        for i in range(a.repeats):
            # Odd pairs run ours first: whichever side runs second in a process tends to be a little
            # slower (allocator and cache state), so the order alternates and the medians are compared.
            print(f"pair {i + 1}/{a.repeats}" + (" (ours first)" if i % 2 else ""))
            if i % 2:
                ours_sps.append(ours(overrides, tmp / f"ours{i}"))
            bare_sps.append(bare(ctx, tmp / f"bare{i}", a))
            if not i % 2:
                ours_sps.append(ours(overrides, tmp / f"ours{i}"))
    b, o = statistics.median(bare_sps), statistics.median(ours_sps)
    print(f"bare HF Trainer: {b:.1f} samples/s | plm-runner: {o:.1f} samples/s | ratio ours/bare = {o / b:.3f}")
    return 0
