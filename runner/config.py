"""Config checks: each config group has a dataclass mirroring its YAML; unknown or missing keys fail loudly.

Hydra already refuses `method.foo=1` for a key the YAML lacks; this also catches `+method.foo=1`, YAML
files that drifted from the code, and bad values, each with one line that names the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runner.errors import UserError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides: list[str]):
    """The composed config of `python -m runner <overrides>`, outside a Hydra run (benchmarks, recipe
    diagnostics): Hydra imported lazily, the project's resolvers registered."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from runner.results import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def build(cls, values: dict[str, Any], where: str):
    """Instantiate dataclass `cls` from `values`, naming unknown and missing keys."""
    fields = _fields(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(unknown_key_message(where, unknown, list(fields)))
    missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{where}: missing key(s) {', '.join(missing)} (add them to the YAML)")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        _check_type(value, hints[name], f"{where}.{name}")
    try:
        return cls(**values)
    except ValueError as e:  # the dataclass's own checks (__post_init__)
        raise UserError(str(e)) from None


def closest(name: str, options: Iterable[str]) -> str | None:
    """The option most like `name` (difflib), or None when nothing is close."""
    found = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_key_message(where: str, unknown: list[str], valid: list[str]) -> str:
    """`unknown key method.ratoi; did you mean method.ratios? valid keys: ...` (where="" for top level)."""
    prefix = f"{where}." if where else ""
    hints = [f"{prefix}{match}" for key in unknown if (match := closest(key, valid))]
    message = f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + k for k in unknown)}"
    if hints:
        message += f"; did you mean {' or '.join(hints)}?"
    return f"{message}{'' if hints else ';'} valid keys: {', '.join(valid)}"


def _check_type(value, hint, where: str) -> None:
    """Shallow type check of a YAML value against a dataclass annotation (int accepted for float)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return
        for arg in args:
            if arg is type(None):
                continue
            try:
                _check_type(value, arg, where)
                return
            except UserError:
                continue
        raise UserError(f"{where}: {value!r} is not a valid {_name(hint)}")
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(str, typing.get_args(hint)))}")
        return
    base = origin or hint
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return
    if base in (list, tuple) and isinstance(value, list | tuple):
        return
    if isinstance(base, type) and not isinstance(value, base):
        raise UserError(f"{where}: {value!r} is not a valid {_name(hint)}")
    if base is int and isinstance(value, bool):
        raise UserError(f"{where}: {value!r} is not a valid int")


def _name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def to_dict(cfg) -> dict[str, Any]:
    """Plain resolved dict of an OmegaConf config (or dict)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)
