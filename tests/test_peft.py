"""method=peft's blocks on tiny models: every option on every family (runs a few steps or refuses in one
line), trainable counts against peft's own, prefix tuning's attention, adapter save/reload/merge."""

from __future__ import annotations

import re

import pytest
import torch

from runner.errors import UserError
from runner.methods.peft import Config
from runner.models import arch, count_parameters, load_model
from runner.peft import adapters, search
from tests.test_models import model_cfg

FAMILIES = ("tiny-bert", "tiny-roberta", "tiny-electra", "tiny-t5")
EOS = 102  # the tiny models' [SEP]; T5 classification pools at the last <eos>
# (family, option) pairs peft or the architecture cannot serve: T5ForSequenceClassification takes neither
# inputs_embeds nor past_key_values, and T5 has no bias terms.
REFUSED = {("tiny-t5", "prefix"), ("tiny-t5", "prompt"), ("tiny-t5", "ptuning"), ("tiny-t5", "bitfit")}


def options(**changes) -> Config:
    return Config(**{"virtual_tokens": 4, "lora_r": 4, "ptuning_hidden": 16, **changes})


def tiny(name: str, seed: int = 0, **changes):
    torch.manual_seed(seed)
    return load_model(model_cfg(name, **changes), num_labels=2)


def batch(n: int = 4, length: int = 9, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (n, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, EOS
    mask = torch.ones_like(ids)
    mask[0, 6:], ids[0, 6:] = 0, 0
    ids[0, 5] = EOS
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(n) % 2}


def train_steps(model, steps: int = 3, lr: float = 1e-2) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for i in range(steps):
        opt.zero_grad()
        loss = model(**batch(seed=i)).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_arch_names_the_modules_peft_targets():
    bert, t5 = tiny("tiny-bert"), tiny("tiny-t5")
    assert arch.linear_names(bert, ["q", "v"]) == [
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value",
        "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.value"]
    assert arch.linear_names(bert, ["ffn_out"]) == ["bert.encoder.layer.0.output.dense",
                                                    "bert.encoder.layer.1.output.dense"]
    assert len(arch.linear_names(t5, ["q"])) == 2 + 2 * 2  # encoder self; decoder self + cross
    assert arch.linear_names(t5, ["ffn_gate"]) == []  # a ReLU T5 FFN has no gate
    assert arch.backbone_layernorm_names(bert) == [
        "bert.embeddings.LayerNorm", "bert.encoder.layer.0.attention.output.LayerNorm",
        "bert.encoder.layer.0.output.LayerNorm", "bert.encoder.layer.1.attention.output.LayerNorm",
        "bert.encoder.layer.1.output.LayerNorm"]
    assert len(arch.backbone_layernorm_names(t5)) == 2 * 2 + 1 + 2 * 3 + 1  # + final_layer_norm per stack
    assert arch.head_names(bert) == ["classifier"] and arch.head_names(t5) == ["classification_head"]
    assert arch.layer_names(t5)[-1] == "transformer.decoder.block.1"
    with pytest.raises(UserError, match="unknown linear part"):
        arch.linear_names(bert, ["query"])


@pytest.mark.parametrize("option", adapters.OPTIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_option_trains_or_refuses_in_one_line(family, option):
    base = tiny(family)
    if (family, option) in REFUSED:
        with pytest.raises(UserError) as e:
            adapters.attach(option, base, options(peft=option))
        assert "\n" not in str(e.value) and option in str(e.value)
        return
    model = adapters.attach(option, base, options(peft=option))
    counts = adapters.trainable_parameters(model)
    ours = count_parameters(model)
    assert (counts["count"], counts["total"]) == (ours["trainable"], ours["total"])
    if option in adapters.PEFT_OPTIONS:  # peft's own figures
        assert (counts["count"], counts["total"]) == model.get_nb_trainable_parameters()
    elif option == "bitfit":
        biases = sum(p.numel() for n, p in base.named_parameters() if n.endswith("bias"))
        head = sum(p.numel() for n, p in base.named_parameters() if n.startswith(tuple(arch.head_names(base)))
                   and not n.endswith("bias"))
        assert counts["count"] == biases + head
    else:  # Child-Tuning trains the whole model (its mask acts on the gradients)
        assert counts["count"] == counts["total"]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    losses = train_steps(model)
    assert all(torch.isfinite(torch.tensor(losses)))
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items()), "a frozen weight moved"
    moved = [n for n, v in trained.items() if not torch.equal(after[n], v)]
    assert any(re.search(r"classifier|classification_head", n) for n in moved), "the head did not train"
    assert len(moved) >= 2


def test_head_stays_trainable_on_t5_where_peft_would_leave_it_frozen():
    model = adapters.attach("lora", tiny("tiny-t5"), options())
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("classification_head" in n for n in names)


def test_ln_tuning_trains_under_a_tenth_of_a_percent_of_minilm():
    model = adapters.attach("ln", load_model(model_cfg("minilm"), num_labels=2), options(peft="ln"))
    counts = adapters.trainable_parameters(model)
    assert (counts["count"], counts["total"]) == model.get_nb_trainable_parameters()
    # 13 LayerNorms x (gamma + beta) x 384, plus the 2-way head 384 x 2 + 2
    assert counts["count"] == 13 * 2 * 384 + 384 * 2 + 2
    assert counts["percent"] <= 0.1


def test_prefix_is_attended_and_padding_stays_masked():
    for family in ("tiny-bert", "tiny-roberta", "tiny-electra"):
        model = adapters.attach("prefix", tiny(family), options(peft="prefix")).eval()
        with torch.no_grad():
            model.prompt_encoder.default.embedding.weight.normal_()
            ids = batch()["input_ids"][1:2]
            padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
            mask = torch.cat([torch.ones_like(ids), torch.zeros(1, 3, dtype=torch.long)], dim=1)
            plain = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            torch.testing.assert_close(model(input_ids=padded, attention_mask=mask).logits, plain)
            model.prompt_encoder.default.embedding.weight.normal_()  # another prefix: another output
            assert not torch.allclose(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, plain)


def test_prefix_with_mean_pooling_ignores_padding():
    model = adapters.attach("prefix", tiny("tiny-bert", pooling="mean"), options(peft="prefix")).eval()
    ids = batch()["input_ids"][1:2]
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        padded = model(input_ids=torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1),
                       attention_mask=torch.cat([torch.ones_like(ids), torch.zeros(1, 3, dtype=torch.long)], 1))
    torch.testing.assert_close(padded.logits, plain)


def test_prefix_plus_ln_trains_both():
    model = adapters.attach("prefix", tiny("tiny-bert"), options(peft="prefix", with_ln=True))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("prompt_encoder" in n for n in names) and any("LayerNorm" in n for n in names)
    ln = sum(p.numel() for n, p in tiny("tiny-bert").named_parameters() if "LayerNorm" in n)
    alone = adapters.trainable_parameters(adapters.attach("prefix", tiny("tiny-bert"), options(peft="prefix")))
    assert adapters.trainable_parameters(model)["count"] == alone["count"] + ln
    assert (adapters.trainable_parameters(model)["count"], adapters.trainable_parameters(model)["total"]) == \
        model.get_nb_trainable_parameters()


@pytest.mark.parametrize(("family", "option"), [("tiny-bert", "lora"), ("tiny-bert", "prefix"),
                                                ("tiny-roberta", "prompt"), ("tiny-electra", "ptuning"),
                                                ("tiny-t5", "ia3"), ("tiny-t5", "ln"), ("tiny-bert", "bitfit"),
                                                ("tiny-bert", "ln")])
def test_saved_adapter_reloads_onto_a_fresh_base_with_the_same_outputs(family, option, tmp_path):
    cfg = options(peft=option, with_ln=option == "lora")
    model = adapters.attach(option, tiny(family), cfg)
    train_steps(model)
    model.eval()
    inputs = {k: v for k, v in batch(seed=9).items() if k != "labels"}
    with torch.no_grad():
        trained = model(**inputs).logits
    size = adapters.save(option, model, tmp_path / "adapter")
    assert size < 0.2 * sum(p.numel() * 4 for p in tiny(family).parameters())  # small: not the model
    reloaded = adapters.load(option, tiny(family), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, trained)
        merged = adapters.merge(option, reloaded)
        if option in adapters.MERGEABLE:
            assert not hasattr(merged, "peft_config")
            torch.testing.assert_close(merged(**inputs).logits, trained, atol=1e-5, rtol=1e-4)
        else:
            assert merged is None


def test_config_refuses_ln_on_top_of_options_that_do_not_take_it():
    with pytest.raises(ValueError, match="with_ln"):
        Config(peft="bitfit", with_ln=True)
    with pytest.raises(ValueError, match="child_p"):
        Config(peft="child_f", child_p=0.0)


def test_target_names_that_match_nothing_are_refused():
    with pytest.raises(UserError, match="lora_targets"):
        adapters.attach("lora", tiny("tiny-t5"), options(lora_targets=["ffn_gate"]))


def test_search_space_suggests_valid_overrides_for_every_option():
    import optuna

    from tests.conftest import compose

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        search.space(None, trial)
        seen.add(trial.params["method.peft"])
        low, high = search.LR_RANGE[trial.params["method.peft"]]
        assert low <= trial.params["train.lr"] <= high
        cfg = compose(["+experiment=search/peft_sst2", *(f"{k}={v}" for k, v in trial.params.items())])
        assert Config(**{k: v for k, v in cfg.method.items()}).peft == trial.params["method.peft"]
        study.tell(trial, 0.5)
    assert seen == set(search.OPTIONS)
