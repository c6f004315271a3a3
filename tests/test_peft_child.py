"""Child-Tuning's gradient masks (runner/peft/child.py) on tiny-bert, alone and inside the HF Trainer."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from runner.peft import child
from tests.test_peft import batch, tiny

P = 0.3


def grads_of(model, seed: int = 0) -> None:
    model.zero_grad()
    model.train()
    model(**batch(n=8, seed=seed)).loss.backward()


def test_f_keeps_about_p_of_the_gradient_entries_rescaled_by_one_over_p():
    model = tiny("tiny-bert")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    callback = child.ChildTuning(params, "F", P)
    masks = []
    for step in range(3):
        grads_of(model, seed=step)
        before = {n: p.grad.clone() for n, p in params.items()}
        callback.apply()
        kept = {n: p.grad != 0 for n, p in params.items()}
        masks.append(torch.cat([k.flatten() for k in kept.values()]))
        for n, p in params.items():  # survivors are the gradient / p, the rest zero
            torch.testing.assert_close(p.grad[kept[n]], before[n][kept[n]] / P)
        nonzero = sum(int((g != 0).sum()) for g in before.values())
        assert nonzero > 10_000
        assert callback.kept[-1] == pytest.approx(P, abs=0.02)
    assert not torch.equal(masks[0], masks[1]), "F must draw a new mask every step"


def test_fisher_mask_keeps_the_top_p_share_of_the_layer_weights_only():
    model = tiny("tiny-bert")
    params = child.layer_parameters(model)
    assert params and all(n.startswith("bert.encoder.layer.") for n in params)
    batches = [{k: v for k, v in batch(n=8, seed=s).items()} for s in range(3)]
    torch.manual_seed(5)  # the same dropout draws in the reference below
    mask = child.fisher_mask(model, batches, params, P)
    assert set(mask) == set(params)
    share = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
    assert share == pytest.approx(P, abs=0.001)
    assert all(p.grad is None for p in model.parameters())
    # the kept entries score at least as high as every dropped one
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    torch.manual_seed(5)
    for b in batches:
        model.zero_grad()
        model(**b).loss.backward()
        for n, p in params.items():
            torch.nn.utils.clip_grad_norm_(p, 1.0)
            fisher[n] += p.grad ** 2
    kept = torch.cat([fisher[n][mask[n]] for n in params])
    dropped = torch.cat([fisher[n][~mask[n]] for n in params])
    assert kept.min() >= dropped.max()


class _Record(TrainerCallback):
    """After Child-Tuning's callback: the gradients the optimizer is about to see."""

    def __init__(self, params):
        self.params, self.seen = params, []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.seen.append({n: (p.grad != 0).clone() for n, p in self.params.items() if p.grad is not None})


def _train(model, callbacks, tmp_path, steps=4):
    rows = [{k: v[i] for k, v in batch(n=8, seed=s).items()} for s in range(steps) for i in range(8)]
    data = Dataset.from_list([{k: v.tolist() for k, v in r.items()} for r in rows])
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=8,
                             learning_rate=1e-3, weight_decay=0.0, use_cpu=True, report_to="none",
                             save_strategy="no", logging_strategy="no", seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    trainer.train()
    return trainer


def test_d_mask_is_fixed_and_applied_before_the_optimizer_moments(tmp_path):
    model = tiny("tiny-bert")
    params = child.layer_parameters(model)
    mask = child.fisher_mask(model, [batch(n=8, seed=s) for s in range(2)], params, P)
    frozen = {n: m.clone() for n, m in mask.items()}
    callback, record = child.ChildTuning(params, "D", P, mask), _Record(params)
    trainer = _train(model, [callback, record], tmp_path)
    assert len(record.seen) == len(callback.kept) == 4
    assert all(torch.equal(callback.masks[n], frozen[n]) for n in frozen), "D's mask changed"
    for seen in record.seen:  # every step, only entries of the fixed mask carry a gradient
        assert all(not (nonzero & ~frozen[n]).any() for n, nonzero in seen.items())
    moments = {n: trainer.optimizer.state[p]["exp_avg"] for n, p in params.items()}
    outside = torch.cat([moments[n][~frozen[n]].flatten() for n in params])
    inside = torch.cat([moments[n][frozen[n]].flatten() for n in params])
    assert torch.count_nonzero(outside) == 0, "masked entries reached Adam's first moment"
    assert torch.count_nonzero(inside) > 0.5 * inside.numel()


def test_f_inside_the_trainer_masks_each_step(tmp_path):
    model = tiny("tiny-bert")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    callback, record = child.ChildTuning(params, "F", P), _Record(params)
    _train(model, [callback, record], tmp_path, steps=3)
    assert len(callback.kept) == 3 and all(k == pytest.approx(P, abs=0.02) for k in callback.kept)
    first, second = (torch.cat([s[n].flatten() for n in sorted(s)]) for s in record.seen[:2])
    assert not torch.equal(first, second)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="mode"):
        child.ChildTuning({}, "X", P)
    with pytest.raises(ValueError, match="Fisher"):
        child.ChildTuning({}, "D", P)
    with pytest.raises(ValueError, match="reserve_p"):
        child.ChildTuning({}, "F", 1.5)
