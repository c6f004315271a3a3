"""Distillation blocks: attention-score capture, student layer copy, projection, layer maps, pair checks."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from runner.distill import layers, student
from runner.errors import UserError
from runner.models import arch

FAMILY_KWARGS = {
    "bert": {},
    "roberta": {"pad_token_id": 0, "max_position_embeddings": 40},
    "electra": {"embedding_size": 16},
}


def tiny(model_type: str, layers_: int = 4, hidden: int = 32, num_labels: int = 3, vocab: int = 100):
    cfg = AutoConfig.for_model(model_type, vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers_,
                               num_attention_heads=4, intermediate_size=2 * hidden, num_labels=num_labels,
                               **FAMILY_KWARGS[model_type])
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(cfg).eval()


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 100, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def manual_scores(model, inputs):
    """Q K^T / sqrt(d) + (1 - mask) * -10000, from the weights and the hidden states of a plain forward."""
    hidden = model(**inputs, output_hidden_states=True).hidden_states
    out = []
    for i, att in enumerate(arch.attentions(model, kind="self")):
        x = hidden[i]
        q = (x @ att.q.weight.T + att.q.bias).view(2, 7, att.num_heads, att.head_dim).transpose(1, 2)
        k = (x @ att.k.weight.T + att.k.bias).view(2, 7, att.num_heads, att.head_dim).transpose(1, 2)
        pad = (1 - inputs["attention_mask"][:, None, None, :].float()) * -10000.0
        out.append(q @ k.transpose(-1, -2) / att.head_dim**0.5 + pad)
    return out, hidden


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra"])
def test_attention_scores_equal_manual_and_eager_probabilities(model_type):
    model, inputs = tiny(model_type), batch()
    with arch.attention_scores(model) as cap:
        model(**inputs)
    expected, hidden = manual_scores(model, inputs)
    assert len(cap.scores) == 4 and cap.scores[0].shape == (2, 4, 7, 7)
    for got, want in zip(cap.scores, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    for got, want in zip(cap.hidden, hidden, strict=True):
        torch.testing.assert_close(got, want)
    # softmax of the captured scores is what eager attention returns as probabilities
    model.set_attn_implementation("eager")
    probs = model(**inputs, output_attentions=True).attentions
    for got, want in zip(cap.scores, probs, strict=True):
        torch.testing.assert_close(torch.softmax(got, -1), want, rtol=1e-5, atol=1e-6)
    # hooks are gone after the block
    assert all(not a.q._forward_hooks for a in arch.attentions(model))


def test_attention_scores_refuse_t5():
    from transformers import T5Config, T5EncoderModel

    model = T5EncoderModel(T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4))
    with pytest.raises(UserError, match="T5"):
        arch.attention_scores(model)


@pytest.mark.parametrize("model_type", ["bert", "electra"])
def test_student_layer_copy_is_exact(model_type):
    teacher = tiny(model_type, layers_=4)
    kept = student.from_teacher(teacher, [0, 2]).eval()
    assert arch.num_layers(kept) == {"encoder": 2}
    t_state, s_state = teacher.state_dict(), kept.state_dict()
    prefix = f"{model_type}.encoder.layer."
    for key, value in s_state.items():
        if key.startswith(prefix):
            j, rest = key[len(prefix):].split(".", 1)
            source = t_state[f"{prefix}{[0, 2][int(j)]}.{rest}"]
        else:
            source = t_state[key]
        assert torch.equal(value, source), key
    # the copied embeddings give the teacher's embedding output (hidden rep 0)
    inputs = batch()
    with torch.no_grad():
        body = teacher.base_model
        h = body.embeddings(input_ids=inputs["input_ids"])
        if hasattr(body, "embeddings_project"):
            h = body.embeddings_project(h)
        kept_out = kept(**inputs, output_hidden_states=True).hidden_states
        torch.testing.assert_close(kept_out[0], h)


def test_cut_diagnostic_gaps_are_zero_for_a_copied_prefix_and_positive_after_a_skip():
    """runner.distill.student.hidden_states / relative_gap (the layer-choice diagnostics): a student copied from
    the teacher's first layers reproduces their outputs exactly; one copied from layers 1 and 3 does not (its
    layer 0, a copy of layer 1, reads the embeddings instead of layer 0's output)."""
    teacher = tiny("bert")
    batches = [batch()]
    reference = student.hidden_states(teacher, batches)
    assert len(reference[0][0]) == 5 and student.relative_gap(reference, reference, [(4, 4)]) == [0.0]
    prefix = student.hidden_states(student.from_teacher(teacher, [0, 1]).eval(), batches)
    assert student.relative_gap(prefix, reference, [(1, 1), (2, 2)]) == [0.0, 0.0]
    skip = student.hidden_states(student.from_teacher(teacher, [1, 3]).eval(), batches)
    gaps = student.relative_gap(skip, reference, [(1, 2), (2, 4)])
    assert all(g > 0.01 for g in gaps)
    assert student.relative_gap(skip, reference, [(0, 0)]) == [0.0]  # the embeddings are copied as they are


def test_student_every_other_and_mean_pooling_kept():
    teacher = tiny("bert", layers_=4)
    arch.set_pooling(teacher, "mean")
    kept = student.from_teacher(teacher, "every_other")
    assert arch.num_layers(kept) == {"encoder": 2}
    assert isinstance(kept.base_model.pooler, arch.MeanPooler)
    inputs = batch()
    assert kept(**inputs).logits.shape == (2, 3)


def test_projection_only_when_widths_differ():
    teacher = tiny("bert", layers_=4, hidden=32)
    same = student.from_teacher(teacher, [0, 1])
    assert student.attach_projection(same, teacher) is None
    narrow = student.random_like(teacher, 2, {"hidden_size": 16, "intermediate_size": 32})
    proj = student.attach_projection(narrow, teacher)
    assert (proj.in_features, proj.out_features) == (16, 32)
    assert any(n.startswith(student.PROJECTION) for n, _ in narrow.named_parameters())
    assert student.attach_projection(narrow, teacher) is proj  # one shared W_fit
    student.detach_projection(narrow)
    assert not any(n.startswith(student.PROJECTION) for n in narrow.state_dict())


def test_layer_maps():
    assert layers.uniform_map(3, 6) == [1, 3, 5]
    assert layers.uniform_map(2, 6) == [2, 5]
    assert layers.uniform_map(1, 2) == [1]
    assert layers.kept_layers("every_other", 6) == [0, 2, 4]
    assert layers.layer_map([0, 4], 2, 6) == [0, 4]
    assert layers.layer_map(None, 3, 6) == [1, 3, 5]


@pytest.mark.parametrize("call, match", [
    (lambda: layers.uniform_map(4, 6), "split evenly"),
    (lambda: layers.check_map([1, 2], 3, 6), "has 2 entries"),
    (lambda: layers.check_map([3, 1, 5], 3, 6), "increasing"),
    (lambda: layers.check_map([1, 3, 6], 3, 6), r"\[0, 5\]"),
    (lambda: layers.kept_layers([0, 7], 6), "teacher has 6 layers"),
    (lambda: layers.kept_layers([], 6), "list of teacher layers"),
    (lambda: layers.kept_layers("some", 6), "list of teacher layers"),
])
def test_bad_layer_specs_one_line(call, match):
    with pytest.raises(UserError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


def test_pair_checks_one_line():
    teacher = tiny("bert", num_labels=3)
    with pytest.raises(UserError, match="vocabulary") as err:
        student.check_pair(teacher, tiny("bert", vocab=120), 3)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="predicts 3 labels but the task has 2"):
        student.check_pair(teacher, tiny("bert", num_labels=2), 2)
    student.check_pair(teacher, tiny("bert", layers_=1), 3)


def test_logit_cache_matches_the_live_teacher_and_misses_unknown_rows(tmp_path):
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast

    from runner.teacher_logits import LogitCache, teacher_targets

    teacher = tiny("bert")
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, "[UNK]")),
                                  pad_token="[PAD]")
    rows = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [5, 6, 7]]
    ds = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows], "labels": [0, 1, 2, 0]})
    cache = LogitCache.build(teacher, ds, tok, batch_size=3)
    cache.save(tmp_path / "c.pt")
    cache = LogitCache.load(tmp_path / "c.pt")
    batch = DataCollatorWithPadding(tok)([{"input_ids": r, "attention_mask": [1] * len(r)} for r in rows[:3]])
    with torch.no_grad():
        live = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(cache.lookup(batch["input_ids"], batch["attention_mask"]), live, rtol=1e-4, atol=1e-5)
    unknown = torch.tensor([[5, 6, 99]])
    assert cache.lookup(unknown, torch.ones_like(unknown)) is None
    # teacher_targets: the cached rows when all are known, the live teacher otherwise
    features = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    torch.testing.assert_close(teacher_targets(cache, None, features), cache.lookup(**features))
    with torch.no_grad():
        expected = teacher(input_ids=unknown).logits
    torch.testing.assert_close(teacher_targets(cache, teacher, {"input_ids": unknown}), expected)
    torch.testing.assert_close(teacher_targets(None, teacher, {"input_ids": unknown}), expected)
