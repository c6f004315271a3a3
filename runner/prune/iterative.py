"""Structured pruning in steps, with recovery training after each (CAP's structured schedule; Xu et al. 2022):

    banks     (method.contrastive) the training set encoded by the pre-trained and the dense fine-tuned model
    step k    of K = method.iterative_steps: heads and FFN neurons masked up to k/K of their targets
                score   head importance (the chosen order) and FFN importance on the current gated model;
                        units masked earlier stay masked (their scores are set below every other)
                snap    (contrastive, k > 1) the model as it is, before this step's masks, encoded: one more
                        snapshot in the snapshot bank
                mask    gates to 0
                train   method.recovery_epochs with (1 - alpha_kd) CE + alpha_kd KD (+ the contrastive terms)
              each step is a stage: its gated weights (state.pt) and snapshot are kept, so a killed run resumes
              at the first unfinished step with the same masks and banks
    prune     the final gates become physically smaller matrices (runner.prune.structured.prune_masked)

The reference prunes 10%, 20%, ..., 90% of heads and FFN neurons together, 2 epochs after each; here the
targets are method.heads / method.ffn and the step count is a key.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path

import torch
from transformers import TrainerCallback

from runner.evaluation import evaluate
from runner.models import arch
from runner.prune import contrastive, losses, structured
from runner.teacher_logits import row_key
from runner.train import fit


def install_gates(model) -> None:
    """Register every head and neuron gate (ones), so a saved gated state dict loads into a fresh copy."""
    for att in arch.attentions(model, "self", "encoder"):
        att.head_gate()
    for ffn in arch.ffns(model, stack="encoder"):
        arch.neuron_gate(ffn)


def masked_heads(model) -> list[list[int]]:
    gates = structured.head_gates(model)
    return [[h for h in range(gates.shape[1]) if gates[i, h] == 0] for i in range(gates.shape[0])]


def kept_neurons(model) -> list[list[int]]:
    return [arch.neuron_gate(f).nonzero().flatten().tolist() for f in arch.ffns(model, stack="encoder")]


def mask_ffn(model, cfg, share: float, batches) -> None:
    """Gate FFN neurons to 0 until `share` of each chosen layer is masked; masked ones stay masked."""
    imp = structured.ffn_importance(model, cfg.ffn_importance, batches)
    for i, ffn in enumerate(arch.ffns(model, stack="encoder")):
        gate = arch.neuron_gate(ffn)
        imp[i] = imp[i].float().masked_fill(gate.to(imp[i].device) == 0, -1.0)  # below every importance (>= 0)
    structured.gate_neurons(model, structured.select_neurons(imp, share, cfg.ffn_scope, cfg.ffn_layers))


def build_banks(ctx, dense, device) -> contrastive.Banks:
    cfg = ctx.method
    train = ctx.data["train"]
    banks = contrastive.Banks([row_key(ids) for ids in train["input_ids"]], torch.tensor(train["labels"]))
    bs = ctx.train.eval_batch_size
    banks.add("pretrained", contrastive.encode(ctx.new_model(), train, ctx.tokenizer, bs, cfg.cap_pooling, device))
    banks.add("finetuned", contrastive.encode(dense, train, ctx.tokenizer, bs, cfg.cap_pooling, device))
    return banks


def prune_iteratively(ctx, stages, dense, teacher, cache, batches, order=None) -> tuple:
    """Returns (the physically pruned model, masked heads, kept neurons, per-step info)."""
    cfg = ctx.method
    device = "cuda" if ctx.hardware.device == "cuda" else "cpu"
    steps = cfg.iterative_steps
    heads_target = cfg.heads if cfg.pruner in ("heads", "structured") else 0.0
    ffn_target = cfg.ffn if cfg.pruner in ("ffn", "structured") else 0.0
    model = copy.deepcopy(dense).to(device)
    install_gates(model)
    banks = build_banks(ctx, dense, device) if cfg.contrastive else None
    loss_fn = losses.pruning_loss(cfg, cache, banks, ctx.seed) if (cfg.alpha_kd > 0 or banks) else None
    infos = []
    for k in range(1, steps + 1):
        share_h, share_f = heads_target * k / steps, ffn_target * k / steps
        key = {"step": k, "of": steps, "heads": share_h, "ffn": share_f, "seed": ctx.seed,
               "method": dataclasses.asdict(cfg), "train": dataclasses.asdict(ctx.train)}

        def build(path: Path, k=k, share_h=share_h, share_f=share_f) -> dict:
            if banks is not None and k > 1:
                snapshot = contrastive.encode(model, ctx.data["train"], ctx.tokenizer, ctx.train.eval_batch_size,
                                              cfg.cap_pooling, device)
                torch.save(snapshot, path / "snapshot.pt")
                banks.add("snapshot", snapshot)
            if share_h > 0:
                structured.mask_heads(model, batches, share_h, cfg.head_step, cfg.head_importance,
                                      cfg.allow_empty_layers, log=ctx.log, seed=ctx.seed, order=order)
            if share_f > 0:
                mask_ffn(model, cfg, share_f, batches)
            gated = evaluate(ctx, model)
            result = fit(ctx, model, output=f"step{k}-recovery", teacher=teacher if cfg.alpha_kd > 0 else None,
                         loss_fn=loss_fn, train=dataclasses.replace(ctx.train, epochs=cfg.recovery_epochs))
            shutil.rmtree(ctx.path(f"step{k}-recovery"), ignore_errors=True)
            torch.save(model.state_dict(), path / "state.pt")
            return {"heads": share_h, "ffn": share_f, "masked_heads": sum(map(len, masked_heads(model))),
                    "gated": gated, "metrics": evaluate(ctx, model), "train": result["train"]}

        stage = stages.run(f"step{k}", key, build)
        if stage.reused != "computed":  # resumed: this step's weights, gates and snapshot as they were saved
            model.load_state_dict(torch.load(stage.path / "state.pt", weights_only=True))
            if banks is not None and (stage.path / "snapshot.pt").exists():
                banks.add("snapshot", torch.load(stage.path / "snapshot.pt", weights_only=True))
        infos.append({"step": k, **stage.info})
        ctx.log(f"prune step {k}/{steps}: heads {share_h:.3f}, ffn {share_f:.3f}, "
                f"{ctx.task.main_metric} {stage.info['metrics'].get(ctx.task.main_metric, float('nan')):.4f}")
    heads = masked_heads(model) if heads_target > 0 else None
    neurons = kept_neurons(model) if ffn_target > 0 else None
    structured.prune_masked(model, heads, neurons, cfg.allow_empty_layers)
    return model, heads, neurons, infos


def drop_step_states(run_dir: Path, steps: int) -> None:
    """Once the pruned model is saved, the steps' gated full-size weights are done with."""
    for k in range(1, steps + 1):
        (Path(run_dir) / f"step{k}" / "state.pt").unlink(missing_ok=True)


class Snapshots(TrainerCallback):
    """Unstructured CAP: every `every` optimizer steps, the model being pruned encodes the training set into the
    snapshot bank; each snapshot is also saved under `folder`, so a resumed run reloads those taken before."""

    def __init__(self, ctx, banks: contrastive.Banks, every: int, folder: Path, device):
        self.ctx, self.banks, self.every, self.folder, self.device = ctx, banks, every, Path(folder), device

    def on_train_begin(self, args, state, control, **kwargs):
        for path in sorted(self.folder.glob("step*.pt"), key=lambda p: int(p.stem[4:])):
            if int(path.stem[4:]) <= state.global_step:
                self.banks.add("snapshot", torch.load(path, weights_only=True))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if self.every <= 0 or step % self.every or model is None:
            return
        ctx, cfg = self.ctx, self.ctx.method
        vectors = contrastive.encode(model, ctx.data["train"], ctx.tokenizer, ctx.train.eval_batch_size,
                                     cfg.cap_pooling, self.device)
        model.train()
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save(vectors, self.folder / f"step{step}.pt")
        self.banks.add("snapshot", vectors)
