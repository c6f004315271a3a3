"""LM-BFF prompt-based fine-tuning: template rendering, label words, the two scorers against hand-computed
references, checkpoints of a tied MLM, and the CLI on tiny-bert (16-shot SST-2)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from runner.errors import UserError
from runner.models import load_model, load_tokenizer
from runner.peft import lmbff
from tests.conftest import run_cli
from tests.test_models import model_cfg

SST2 = "*cls**sent_0*_It_was*mask*.*sep+*"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(model_cfg("tiny-bert"))


def test_sst2_template_renders_as_lm_bff_writes_it(tok):
    out = lmbff.render(lmbff.parse_template(SST2), ["a gripping film"], tok, 64)
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    assert out["input_ids"] == [tok.cls_token_id, *enc("a gripping film"), *enc(" It was"), tok.mask_token_id,
                                *enc("."), tok.sep_token_id]
    assert out["token_type_ids"] == [0] * len(out["input_ids"]) and out["attention_mask"] == [1] * len(out["input_ids"])


def test_pair_template_lower_cases_switches_segments_and_truncates_only_sentences(tok):
    parts = lmbff.parse_template("*cls**sent-_0**sep+**mask*,*+sentl_1**sep+*")
    out = lmbff.render(parts, ["Is it good?", "It Is"], tok, 64)
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    first = [tok.cls_token_id, *enc("Is it good"), tok.sep_token_id]
    assert out["input_ids"] == [*first, tok.mask_token_id, *enc(","), *enc(" it Is"), tok.sep_token_id]
    assert out["token_type_ids"] == [0] * len(first) + [1] * (len(out["input_ids"]) - len(first))
    short = lmbff.render(lmbff.parse_template(SST2), ["word " * 50], tok, 12)
    assert len(short["input_ids"]) == 12 and short["input_ids"][-4:] == [
        *tok.encode(" It was", add_special_tokens=False)[-1:], tok.mask_token_id,
        *tok.encode(".", add_special_tokens=False), tok.sep_token_id]


def test_bad_templates_and_label_words_are_refused(tok):
    with pytest.raises(UserError, match="mask"):
        lmbff.parse_template("*cls**sent_0**sep+*")
    with pytest.raises(UserError, match="sent_1"):
        lmbff.render(lmbff.parse_template("*cls**sent_1**mask**sep+*"), ["only one"], tok, 32)
    assert len(lmbff.label_word_ids(["terrible", "great"], tok)) == 2
    with pytest.raises(UserError, match="one token"):
        lmbff.label_word_ids(["great", "unmistakablyawful"], tok)


def _batch(tok, texts):
    parts = lmbff.parse_template(SST2)
    rows = [lmbff.render(parts, [t], tok, 32) for t in texts]
    return tok.pad(rows, return_tensors="pt")


def test_mask_verbalizer_reads_the_label_words_at_mask(tok):
    torch.manual_seed(0)
    mlm = load_model(model_cfg("tiny-bert"), kind="mlm").eval()
    words = lmbff.label_word_ids(["terrible", "great"], tok)
    scorer = lmbff.MaskVerbalizer(mlm, words, tok.mask_token_id).eval()
    batch = _batch(tok, ["fine", "a long and boring film"])
    with torch.no_grad():
        logits = scorer(**batch).logits
        full = mlm(**batch).logits
    for b in range(2):
        pos = batch["input_ids"][b].tolist().index(tok.mask_token_id)
        torch.testing.assert_close(logits[b], full[b, pos, words])
    out = scorer(**batch, labels=torch.tensor([0, 1]))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1])))


@pytest.mark.parametrize("family", ["tiny-bert", "tiny-electra"])
def test_mask_classifier_starts_from_the_label_word_embeddings(tok, family):
    torch.manual_seed(0)
    encoder = load_model(model_cfg(family), kind="base").eval()
    words = lmbff.label_word_ids(["terrible", "great"], tok)
    scorer = lmbff.MaskClassifier(encoder, words, tok.mask_token_id).eval()
    table = encoder.get_input_embeddings().weight
    torch.testing.assert_close(scorer.head.weight, table[words])
    batch = _batch(tok, ["fine"])
    with torch.no_grad():
        states = encoder(**batch).last_hidden_state[0]
        pos = batch["input_ids"][0].tolist().index(tok.mask_token_id)
        torch.testing.assert_close(scorer(**batch).logits[0], table[words] @ states[pos])


def test_a_tied_mlm_scorer_can_be_checkpointed(tok, tmp_path):
    mlm = load_model(model_cfg("tiny-bert"), kind="mlm")
    scorer = lmbff.MaskVerbalizer(mlm, lmbff.label_word_ids(["terrible", "great"], tok), tok.mask_token_id)
    state = scorer.state_dict()
    assert len({t.data_ptr() for t in state.values()}) == len(state)
    save_file(state, str(tmp_path / "model.safetensors"))  # what the Trainer does for a plain module
    scorer.load_state_dict(state)


def test_sixteen_shot_sst2_on_tiny_bert_end_to_end(tmp_path, shared_data):
    out = run_cli("model=tiny-bert", "method=prompt", "task=glue/sst2", "task.k_shot=16", "task.max_length=40",
                  "train.max_steps=6", "train.save_steps=3", "train.batch_size=8", "train.lr=1e-3",
                  f"data_dir={shared_data}", f"paths.output_root={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = next(tmp_path.rglob("results.json")).parent
    r = json.loads((run_dir / "results.json").read_text())
    assert r["status"] == "completed" and {"accuracy"} <= set(r["zero_shot"]) and {"accuracy"} <= set(r["test"])
    assert json.loads((run_dir / "model" / "prompt.json").read_text())["label_words"] == ["terrible", "great"]
    assert list((run_dir / "checkpoints").glob("checkpoint-*")), "no checkpoint was written"


def test_t5_is_refused_in_one_line(tmp_path, shared_data):
    out = run_cli("model=tiny-t5", "method=prompt", "task=glue/sst2", "task.k_shot=16", f"data_dir={shared_data}",
                  f"paths.output_root={tmp_path}")
    assert out.returncode == 2
    assert [line for line in out.stderr.splitlines() if line.startswith("error:")] == [
        line for line in out.stderr.splitlines() if "method=prompt needs a BERT-family encoder" in line]


def test_weights_without_an_mlm_head_are_told_apart(tmp_path):
    from runner.models import weights_path

    load_model(model_cfg("tiny-bert"), kind="mlm").save_pretrained(tmp_path / "mlm")
    load_model(model_cfg("tiny-bert"), num_labels=2).save_pretrained(tmp_path / "cls")
    assert lmbff.has_mlm_head(tmp_path / "mlm") is True
    assert lmbff.has_mlm_head(tmp_path / "cls") is False
    assert lmbff.has_mlm_head(weights_path(model_cfg("minilm"))) is False  # all-MiniLM-L6-v2 ships none
    assert lmbff.has_mlm_head(None) is None  # random init: nothing to tell


def test_minilm_with_the_mlm_scorer_is_refused_in_one_line(tmp_path, shared_data):
    out = run_cli("model=minilm", "method=prompt", "task=glue/sst2", "task.k_shot=16", f"data_dir={shared_data}",
                  f"paths.output_root={tmp_path}")
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "head=mask_classifier" in errors[0]


def test_an_mlm_head_fitted_on_a_frozen_encoder_serves_as_base_run(tmp_path, shared_data):
    # the route for backbones without an MLM head: train only the head (decoder tied to the frozen
    # embeddings) on the corpus with method=finetune, then score label words with it
    pretrain = run_cli("model=tiny-bert", "task=pretrain/wikitext", "task.max_train_samples=100",
                       "task.max_eval_samples=50", "task.max_length=32", "train.epochs=1",
                       "method.trainable=[cls.predictions]", f"data_dir={shared_data}",
                       f"paths.output_root={tmp_path / 'pre'}")
    assert pretrain.returncode == 0, pretrain.stderr[-3000:]
    run_dir = next((tmp_path / "pre").rglob("results.json")).parent
    assert lmbff.has_mlm_head(run_dir / "model") is True
    out = run_cli("model=tiny-bert", "method=prompt", f"method.base_run='{run_dir}'", "task=glue/sst2",
                  "task.k_shot=16", "task.max_length=40", "train.max_steps=2", "train.batch_size=8",
                  f"data_dir={shared_data}", f"paths.output_root={tmp_path / 'prompt'}")
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(next((tmp_path / "prompt").rglob("results.json")).read_text())
    assert r["status"] == "completed" and "accuracy" in r["test"]
