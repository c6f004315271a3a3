"""method.peft options onto HF peft (LoRA, prefix, prompt, P-tuning, IA3, LN-tuning) and BitFit.

Every option keeps the task head trainable (peft's modules_to_save, named by runner.models.arch), and the
modules peft adapts are named per family by arch as well (attention q/k/v/o, FFN linears, LayerNorms),
so one option works on BERT, RoBERTa, ELECTRA and, where the architecture allows it, T5. An option a model
cannot take is refused with one line (`check`).

The option's object `cfg` is any object with the attributes of conf/method/peft.yaml (lora_r, lora_alpha,
lora_dropout, lora_targets, ia3_targets, virtual_tokens, prefix_projection, prefix_hidden,
ptuning_encoder, ptuning_hidden, with_ln).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from torch import nn

from runner.errors import UserError
from runner.models import arch, count_parameters, select_trainable

PEFT_OPTIONS = ("lora", "prefix", "prompt", "ptuning", "ia3", "ln")  # HF peft tuners
OPTIONS = (*PEFT_OPTIONS, "bitfit", "child_f", "child_d")           # the last three: a plain model
PROMPT_OPTIONS = ("prefix", "prompt", "ptuning")                    # virtual tokens; no merge
MERGEABLE = ("lora", "ia3", "ln")                                   # folded into the base weights
BITFIT_FILE = "bitfit.safetensors"


def check(option: str, model: nn.Module) -> None:
    """Refuse, with one line, an option this model cannot take."""
    if option not in OPTIONS:
        raise UserError(f"method.peft={option} is not one of {', '.join(OPTIONS)}")
    name = type(model).__name__
    if option in PROMPT_OPTIONS and model.config.is_encoder_decoder:
        # T5ForSequenceClassification refuses inputs_embeds (prompt, P-tuning) and takes no past_key_values
        # in its encoder (prefix): peft has no classification path for these on encoder-decoder models.
        raise UserError(f"method.peft={option}: peft cannot put virtual tokens into {name} (encoder-decoder "
                        "classification); use lora, ia3, ln, child_f or child_d, or a BERT-family model")
    if option == "bitfit" and not any(n.endswith("bias") for n, _ in arch.backbone(model).named_parameters()):
        raise UserError(f"method.peft=bitfit: {name} has no bias terms to tune (T5 uses none); "
                        "use ln or lora, or a BERT-family model")
    if not arch.head_names(model):
        raise UserError(f"method.peft: {name} has no task head; the method tunes classification/regression tasks")


def peft_config(option: str, model: nn.Module, cfg):
    """The HF peft config for `option` on `model` (sequence classification / regression)."""
    import peft

    check(option, model)
    save = arch.head_names(model)
    if getattr(cfg, "with_ln", False):
        save = save + arch.backbone_layernorm_names(model)  # LN-tuning on top (e.g. prefix + LN)
    common = dict(task_type="SEQ_CLS", modules_to_save=save)
    if option == "lora":
        return peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                               target_modules=_names(model, cfg.lora_targets, "lora_targets"), **common)
    if option == "ia3":
        ffn = [p for p in cfg.ia3_targets if p.startswith("ffn_")]
        return peft.IA3Config(target_modules=_names(model, cfg.ia3_targets, "ia3_targets"),
                              feedforward_modules=arch.linear_names(model, ffn), **common)
    if option == "ln":
        return peft.LNTuningConfig(target_modules=arch.backbone_layernorm_names(model), **common)
    if option == "prefix":
        return peft.PrefixTuningConfig(num_virtual_tokens=cfg.virtual_tokens, prefix_projection=cfg.prefix_projection,
                                       encoder_hidden_size=cfg.prefix_hidden, **common)
    if option == "prompt":
        return peft.PromptTuningConfig(num_virtual_tokens=cfg.virtual_tokens, **common)
    if option == "ptuning":
        return peft.PromptEncoderConfig(num_virtual_tokens=cfg.virtual_tokens,
                                        encoder_reparameterization_type=cfg.ptuning_encoder,
                                        encoder_hidden_size=cfg.ptuning_hidden, **common)
    raise ValueError(f"{option} is not an HF peft option")


def _names(model: nn.Module, parts: list[str], key: str) -> list[str]:
    try:
        names = arch.linear_names(model, parts)
    except UserError as e:
        raise UserError(f"method.{key}: {e}") from None
    if not names:
        raise UserError(f"method.{key}={list(parts)} names no module of {type(model).__name__}")
    return names


def prepare(option: str, model: nn.Module) -> nn.Module:
    """Make the base model ready for the option (before wrapping it, and again before reloading an adapter).

    peft's prefix tuning hands the virtual keys/values to the model as `past_key_values` and checks that the
    forward's signature names it; transformers 5 renamed the argument `cache` (the old name still accepted
    and converted), so the check fails although the model consumes them. This instance gets a forward whose
    signature names it; tests check the prefix is attended and padding stays masked.
    """
    if option == "prefix":
        model.forward = functools.partial(_forward_naming_past, model)
    return model


def _forward_naming_past(model, input_ids=None, attention_mask=None, past_key_values=None, **kwargs):
    return type(model).forward(model, input_ids=input_ids, attention_mask=attention_mask,
                               past_key_values=past_key_values, **kwargs)


def attach(option: str, model: nn.Module, cfg) -> nn.Module:
    """The model to train: a PeftModel for peft options; for bitfit the model with only biases and the head
    trainable; for Child-Tuning the model as is (the gradient mask comes from runner.peft.child)."""
    check(option, model)
    if option in PEFT_OPTIONS:
        import peft

        return peft.get_peft_model(prepare(option, model), peft_config(option, model, cfg))
    if option == "bitfit":
        select_trainable(model, freeze=[], trainable=bitfit_patterns(model))
    return model


def bitfit_patterns(model: nn.Module) -> list[str]:
    """BitFit (Ben Zaken et al., ACL 2022): every bias term (q/k/v/o, both FFN linears, LayerNorm beta) plus
    the task head; regexes over parameter names."""
    return [r"\.bias$", *(rf"^{re.escape(h)}\." for h in arch.head_names(model))]


def trainable_parameters(model: nn.Module) -> dict:
    """{"count", "total", "percent"}: peft's own figures (get_nb_trainable_parameters) for a PeftModel, the
    same sums (requires_grad / all parameters) for a plain model."""
    if hasattr(model, "get_nb_trainable_parameters"):
        count, total = model.get_nb_trainable_parameters()
    else:
        counts = count_parameters(model)
        count, total = counts["trainable"], counts["total"]
    return {"count": int(count), "total": int(total), "percent": round(100.0 * count / total, 4)}


def save(option: str, model: nn.Module, path: Path) -> int:
    """Save what the option trained: the peft adapter (adapter_config.json + weights), or BitFit's biases and
    head. Returns the bytes written. (Child-Tuning changes every weight; its method saves the whole model.)"""
    path.mkdir(parents=True, exist_ok=True)
    if option in PEFT_OPTIONS:
        model.save_pretrained(str(path))
    elif option == "bitfit":
        from safetensors.torch import save_file

        save_file({n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                  str(path / BITFIT_FILE))
    else:
        raise ValueError(f"{option}: no adapter to save")
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def load(option: str, base: nn.Module, path: Path) -> nn.Module:
    """A fresh base model (as before training) with the saved adapter put back, in eval mode."""
    if option in PEFT_OPTIONS:
        import peft

        return peft.PeftModel.from_pretrained(prepare(option, base), str(path)).eval()
    if option == "bitfit":
        from safetensors.torch import load_file

        tensors = load_file(str(path / BITFIT_FILE))
        missing = set(tensors) - {n for n, _ in base.named_parameters()}
        if missing:
            raise UserError(f"{path}: BitFit tensors {sorted(missing)[:3]} do not fit {type(base).__name__}")
        base.load_state_dict(tensors, strict=False)
        return base.eval()
    raise ValueError(f"{option}: no adapter to load")


def merge(option: str, model: nn.Module) -> nn.Module | None:
    """LoRA, IA3 and LN-tuning folded into the base weights (a plain transformers model, no adapter
    overhead at inference); None for options that cannot be merged (virtual tokens) or need no merge."""
    if option not in MERGEABLE:
        return None
    _unwrap_saved_modules(model)
    return model.merge_and_unload().eval()


def _unwrap_saved_modules(model: nn.Module) -> None:
    """Put each trained copy of a modules_to_save module (the head, with_ln's LayerNorms) in its wrapper's
    place. merge_and_unload does this itself, except that peft 0.21's IA3 then copies `.weight` off the
    wrapper, which a head made of several layers (RoBERTa, ELECTRA, T5 classification heads) lacks."""
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent_name, _, attr = name.rpartition(".")
            trained = module.modules_to_save[module.active_adapters[0]]
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, trained)
