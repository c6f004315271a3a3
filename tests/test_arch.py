"""runner.models.arch on tiny random-init models of every family and model shape (no download).

The references here (which module computes the FFN output, where `o` sits) are written out from the
transformers source on purpose, so the tests check arch against the real models, not against itself.
"""

import copy
import io

import pytest
import torch
import transformers as tf
from torch import nn

from runner.models import arch

VOCAB, SEQ = 120, 7
BERT_LIKE = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=40, initializer_range=0.2, num_labels=2)
T5 = dict(vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2,
          num_labels=2, eos_token_id=1, pad_token_id=0, decoder_start_token_id=0)

CONFIGS = {
    "bert": lambda: tf.BertConfig(**BERT_LIKE),
    "roberta": lambda: tf.RobertaConfig(**BERT_LIKE, pad_token_id=1),
    "electra": lambda: tf.ElectraConfig(**BERT_LIKE, embedding_size=16),
    "t5": lambda: tf.T5Config(**T5),
    "t5-gated": lambda: tf.T5Config(**T5, feed_forward_proj="gated-gelu"),
}
CASES = {
    "bert-cls": ("bert", tf.BertForSequenceClassification),
    "bert-mlm": ("bert", tf.BertForMaskedLM),
    "bert-bare": ("bert", tf.BertModel),
    "roberta-cls": ("roberta", tf.RobertaForSequenceClassification),
    "roberta-mlm": ("roberta", tf.RobertaForMaskedLM),
    "roberta-bare": ("roberta", tf.RobertaModel),
    "electra-cls": ("electra", tf.ElectraForSequenceClassification),
    "electra-mlm": ("electra", tf.ElectraForMaskedLM),
    "electra-bare": ("electra", tf.ElectraModel),
    "t5-cls": ("t5", tf.T5ForSequenceClassification),
    "t5-gated-cls": ("t5-gated", tf.T5ForSequenceClassification),
    "t5-lm": ("t5", tf.T5ForConditionalGeneration),
    "t5-bare": ("t5", tf.T5Model),
    "t5-gated-encoder": ("t5-gated", tf.T5EncoderModel),
}
# Test-side knowledge of the transformers source: the module whose output IS the FFN output, and `o`.
FFN_OUT = {"bert": lambda layer: layer.output.dense, "t5": lambda block: block.layer[-1].DenseReluDense}
O_PATH = {("bert", "self"): "attention.output.dense", ("t5", "self"): "layer.0.SelfAttention.o",
          ("t5", "cross"): "layer.1.EncDecAttention.o"}


def build(case: str) -> nn.Module:
    config_name, cls = CASES[case]
    torch.manual_seed(0)
    return cls(CONFIGS[config_name]()).eval()


def kind_of(model) -> str:
    return "t5" if arch.family(model) == "t5" else "bert"


def inputs(model) -> dict:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, SEQ), generator=gen)
    if arch.family(model) != "t5":
        return {"input_ids": ids}
    ids[:, -1] = 1  # T5ForSequenceClassification pools the decoder state at </s>
    needs_decoder_ids = hasattr(model, "decoder") and not isinstance(model, tf.T5ForSequenceClassification)
    return {"input_ids": ids, **({"decoder_input_ids": ids[:, :5]} if needs_decoder_ids else {})}


def run(model) -> torch.Tensor:
    out = model(**inputs(model))
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out.last_hidden_state


def changed(a, b) -> bool:
    return (a - b).abs().max().item() > 1e-4


class SameFFN(nn.Module):
    """Recomputes an FFN from copies of its weights: the stand-in for an MoE layer."""

    def __init__(self, f: arch.FFN):
        super().__init__()
        self.w_in, self.w_out = copy.deepcopy(f.w_in), copy.deepcopy(f.w_out)
        self.w_gate, self.act = copy.deepcopy(f.w_gate), copy.deepcopy(f.act_fn())

    def forward(self, x):
        h = self.act(self.w_gate(x)) * self.w_in(x) if self.w_gate is not None else self.act(self.w_in(x))
        return self.w_out(h)


class Zero(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


@pytest.fixture(params=list(CASES))
def case(request):
    return request.param


@pytest.fixture
def model(case):
    return build(case)


@torch.no_grad()
def test_structure_counts_shapes_and_names(model):
    fam = arch.family(model)
    layers = arch.num_layers(model)
    decoder = 2 if hasattr(arch.backbone(model), "decoder") else 0
    assert layers == ({"encoder": 2, "decoder": 2} if decoder else {"encoder": 2})
    assert arch.hidden_size(model) == 32 and arch.ffn_width(model) == 64
    assert type(arch.backbone(model)).__name__ in {"BertModel", "RobertaModel", "ElectraModel", "T5Model",
                                                   "T5EncoderModel", "T5ForConditionalGeneration"}

    ffns = arch.ffns(model)
    assert [(f.stack, f.index) for f in ffns] == [("encoder", 0), ("encoder", 1)] + [
        ("decoder", i) for i in range(decoder)]
    assert len(arch.ffns(model, stack="decoder")) == decoder
    for f in ffns:
        layer = model.get_submodule(f.name)
        assert f.w_in.weight.shape == (64, 32) and f.w_out.weight.shape == (32, 64)
        assert f.input_module in list(layer.modules())
        assert not f.gated or f.w_gate.weight.shape == (64, 32)

    atts = arch.attentions(model)
    assert len(atts) == 2 + 2 * decoder
    assert len(arch.attentions(model, kind="cross")) == decoder
    assert len(arch.attentions(model, kind="self", stack="encoder")) == 2
    for a in atts:
        assert model.get_submodule(a.name) is a.module
        assert a.num_heads == 4 and a.num_heads * a.head_dim == 32
        assert all(lin.weight.shape == (32, 32) for lin in (a.q, a.k, a.v, a.o))
        layer = {(f.stack, f.index): f.name for f in ffns}[a.stack, a.index]
        assert model.get_submodule(f"{layer}.{O_PATH[kind_of(model), a.kind]}") is a.o

    assert fam in arch.SUPPORTED_FAMILIES
    norms = arch.layernorms(model)
    assert len(norms) >= 2 * 2 + 1 and all(model.get_submodule(n) is m for n, m in norms)
    assert arch.embeddings(model) is model.get_input_embeddings()
    head = arch.classifier(model)
    bare = isinstance(model, (tf.BertModel, tf.RobertaModel, tf.ElectraModel, tf.T5Model, tf.T5EncoderModel))
    assert (head is None) == bare
    if head is not None and not isinstance(model, tf.ElectraForMaskedLM):
        assert any(m is head for m in model.modules())


@torch.no_grad()
def test_ffn_forward_matches_the_model(model):
    seen = {}
    handles = []
    for f in arch.ffns(model):
        ref = FFN_OUT[kind_of(model)](model.get_submodule(f.name))
        handles.append(f.input_module.register_forward_hook(
            lambda m, args, out, f=f: seen.setdefault(f.name, {}).update(x=args[0])))
        handles.append(ref.register_forward_hook(
            lambda m, args, out, f=f: seen.setdefault(f.name, {}).update(y=out)))
    run(model)
    for h in handles:
        h.remove()
    for f in arch.ffns(model):
        x, y = seen[f.name]["x"], seen[f.name]["y"]
        torch.testing.assert_close(f.forward(x), y, atol=1e-6, rtol=0)
        assert f.hidden(x).shape == (*x.shape[:-1], 64)


@torch.no_grad()
def test_replace_keeps_logits_for_the_same_function_and_changes_them_for_zero(case, model):
    before = run(model)
    for f in arch.ffns(model):
        f.replace(SameFFN(f))
    torch.testing.assert_close(run(model), before, atol=1e-5, rtol=0)
    zeroed = build(case)
    for f in arch.ffns(zeroed):
        f.replace(Zero())
    assert changed(run(zeroed), before)


def test_replace_keeps_dropout_residual_and_layernorm():
    for case in ("bert-cls", "t5-cls"):
        model = build(case)
        f = arch.ffns(model)[0]
        layer = model.get_submodule(f.name)
        outer = [m for m in layer.modules() if isinstance(m, (nn.Dropout, nn.LayerNorm, arch.T5LayerNorm))
                 and not any(m is n for n in f.input_module.modules())]
        new = SameFFN(f)
        f.replace(new)
        after = list(layer.modules())
        assert all(any(m is n for n in after) for m in outer)
        assert f.input_module is new
        with pytest.raises(ValueError, match="already replaced"):
            arch.ffns(model)


@torch.no_grad()
def test_set_activation(model):
    before = run(model)
    f0 = arch.ffns(model)[0]
    target = "gelu" if f0.activation == "relu" else "relu"
    for f in arch.ffns(model):
        f.set_activation(target)
        assert f.activation == target
    assert changed(run(model), before)
    assert [f.activation for f in arch.ffns(model)] == [target] * len(arch.ffns(model))
    x = torch.randn(3, 32)
    f0 = arch.ffns(model)[0]
    pre = f0.w_gate(x) if f0.gated else f0.w_in(x)
    expected = nn.functional.relu(pre) if target == "relu" else nn.functional.gelu(pre)
    expected = expected * f0.w_in(x) if f0.gated else expected
    torch.testing.assert_close(f0.hidden(x), expected)


def test_activation_names_and_gated_t5():
    assert {f.activation for f in arch.ffns(build("bert-cls"))} == {"gelu"}
    assert {f.activation for f in arch.ffns(build("t5-cls"))} == {"relu"}
    gated = arch.ffns(build("t5-gated-cls"))
    assert all(f.gated and f.w_gate is not None and f.activation == "gelu_new" for f in gated)
    dense = build("t5-gated-cls").get_submodule(gated[0].name).layer[-1].DenseReluDense
    assert type(dense).__name__ == "T5DenseGatedActDense"
    with pytest.raises(ValueError, match="unknown activation"):
        gated[0].set_activation("nope")


@torch.no_grad()
@pytest.mark.parametrize("case", ["bert-cls", "electra-cls", "t5-cls", "t5-gated-cls"])
def test_set_ffn_activation_survives_save_and_load(case, tmp_path):
    model = build(case)
    target = "gelu" if arch.ffns(model)[0].activation == "relu" else "relu"
    arch.set_ffn_activation(model, target)
    assert {f.activation for f in arch.ffns(model)} == {target}
    model.save_pretrained(tmp_path)
    loaded = CASES[case][1].from_pretrained(tmp_path).eval()
    assert {f.activation for f in arch.ffns(loaded)} == {target}
    torch.testing.assert_close(run(loaded), run(model))


@torch.no_grad()
def test_head_gate_ones_keeps_logits(model):
    before = run(model)
    atts = arch.attentions(model)
    gates = [a.head_gate() for a in atts]
    assert all(g.shape == (4,) and bool((g == 1).all()) for g in gates)
    assert all(a.head_gate() is g for a, g in zip(atts, gates, strict=True))  # idempotent
    assert all(len(a.o._forward_pre_hooks) == 1 for a in atts)
    torch.testing.assert_close(run(model), before, atol=1e-6, rtol=0)


@pytest.mark.parametrize("heads", [[1], [0, 1, 2, 3]])
@torch.no_grad()
def test_zeroing_heads_by_gate_equals_zeroing_o_input(model, heads):
    before = run(model)
    a = arch.attentions(model)[-1]

    def zero_slices(module, args):
        x = args[0].clone()
        for h in heads:
            x[..., h * a.head_dim:(h + 1) * a.head_dim] = 0
        return (x,)

    handle = a.o.register_forward_pre_hook(zero_slices)
    manual = run(model)
    handle.remove()
    a.head_gate()[heads] = 0
    gated = run(model)
    torch.testing.assert_close(gated, manual, atol=1e-6, rtol=0)
    assert changed(gated, before)


def test_learnable_gate_gets_gradients_and_survives_state_dict_and_deepcopy():
    for case in ("bert-cls", "t5-cls"):
        model = build(case)
        for a in arch.attentions(model):
            a.set_head_gate(nn.Parameter(torch.rand(a.num_heads)))
        run(model).sum().backward()
        params = dict(model.named_parameters())
        gate_names = [f"{a.name}.head_gate" for a in arch.attentions(model)]
        assert all(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in gate_names)

        with torch.no_grad():
            expected = run(model)
            buffer = io.BytesIO()
            torch.save(model.state_dict(), buffer)
            fresh = build(case)
            for a in arch.attentions(fresh):
                a.set_head_gate(nn.Parameter(torch.ones(a.num_heads)))
            buffer.seek(0)
            fresh.load_state_dict(torch.load(buffer))
            torch.testing.assert_close(run(fresh), expected, atol=0, rtol=0)
            for n in gate_names:
                torch.testing.assert_close(fresh.get_parameter(n), params[n])

            twin = copy.deepcopy(model)
            for a in arch.attentions(twin):
                a.head_gate().zero_()  # must not touch the original's gates
            torch.testing.assert_close(run(model), expected, atol=0, rtol=0)
            assert changed(run(twin), expected)


def test_set_head_gate_back_to_a_buffer_and_wrong_shape():
    a = arch.attentions(build("bert-cls"))[0]
    a.set_head_gate(nn.Parameter(torch.ones(4)))
    a.set_head_gate(torch.zeros(4))
    assert "head_gate" in dict(a.module.named_buffers()) and not list(a.module.parameters(recurse=False))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        a.set_head_gate(torch.ones(3))


def test_unsupported_model_names_the_supported_families():
    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=VOCAB))
    for probe in (arch.family, arch.ffns, arch.attentions, arch.backbone):
        with pytest.raises(arch.UnsupportedModelError) as err:
            probe(gpt2)
        assert str(err.value) == ("model type 'gpt2' is not supported; "
                                  "supported families: bert, roberta, electra, t5")
    assert isinstance(err.value, ValueError)


def test_bad_filters_fail_loudly():
    model = build("t5-cls")
    with pytest.raises(ValueError, match="stack"):
        arch.ffns(model, stack="middle")
    with pytest.raises(ValueError, match="kind"):
        arch.attentions(model, kind="global")
