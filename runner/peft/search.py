"""An AutoPEFT-style search space (Zhou et al., TACL 2024, arXiv 2301.12132) for the Optuna sweeper:
the option first, then that option's own size, then a learning rate in the option's usual range.

    python -m runner -m +experiment=search/peft_sst2      # hydra.sweeper.custom_search_space=runner.peft.search.space

Every suggested name is a config override (method.peft=lora, method.lora_r=8, train.lr=...), so each trial
is an ordinary run with its own run directory; maximised: the task's main metric.
"""

from __future__ import annotations

OPTIONS = ("lora", "ia3", "ln", "bitfit", "prefix", "prompt")
# (low, high) of a log-uniform learning rate per option: parameter-efficient options need far larger
# rates than full fine-tuning, and the range differs by how much of the model they touch.
LR_RANGE = {"lora": (1e-4, 3e-3), "ia3": (1e-3, 3e-2), "ln": (1e-4, 1e-2), "bitfit": (1e-4, 1e-2),
            "prefix": (1e-3, 3e-2), "prompt": (1e-3, 1e-1)}


def space(cfg, trial) -> None:
    """Define-by-run: method.peft, then its size (LoRA rank; virtual tokens; prefix with or without LN),
    then train.lr."""
    option = trial.suggest_categorical("method.peft", list(OPTIONS))
    if option == "lora":
        trial.suggest_categorical("method.lora_r", [2, 4, 8, 16, 32])
    elif option in ("prefix", "prompt"):
        trial.suggest_categorical("method.virtual_tokens", [5, 10, 20, 40])
        if option == "prefix":
            trial.suggest_categorical("method.with_ln", [False, True])
    low, high = LR_RANGE[option]
    trial.suggest_float("train.lr", low, high, log=True)
