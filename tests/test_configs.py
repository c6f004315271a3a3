"""Every config composes, mirrors its dataclass, and documents each key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from runner import registry
from runner.hardware import HardwareConfig
from runner.logger import LoggerConfig
from runner.models import ModelConfig
from runner.run import make_context
from runner.tasks.config import TaskConfig
from runner.train import TrainConfig
from tests.conftest import CONF_DIR, ROOT, compose

GROUPS = {"model": ModelConfig, "task": TaskConfig, "train": TrainConfig, "hardware": HardwareConfig,
          "logger": LoggerConfig}


def options(group: str) -> list[str]:
    base = CONF_DIR / group
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml"))


def all_group_options():
    for group in [*GROUPS, "teacher", "method", "paths"]:
        for option in options(group):
            yield group, option


@pytest.mark.parametrize(("group", "option"), list(all_group_options()))
def test_every_config_composes(group, option, tmp_path):
    cfg = compose([f"{group}={option}"])
    assert cfg[group] is not None
    if group not in ("paths",):
        ctx = make_context(cfg, tmp_path)  # raises on unknown / missing keys or bad types
        assert ctx.seed == cfg.seed


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_yaml_keys_mirror_dataclass(group, option):
    # `defaults` is Hydra's directive (hardware/*.yaml select their launcher with it), not a config key.
    keys = set(yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text())) - {"defaults"}
    fields = {f.name for f in dataclasses.fields(GROUPS[group])}
    assert keys == fields, f"{group}/{option}: yaml-only {keys - fields}, code-only {fields - keys}"


@pytest.mark.parametrize("option", options("method"))
def test_method_yaml_mirrors_its_config_and_registry(option):
    data = yaml.safe_load((CONF_DIR / "method" / f"{option}.yaml").read_text())
    assert data["name"] == option, "conf/method/<name>.yaml must set name: <name>"
    fields = {f.name for f in dataclasses.fields(registry.config_class(option))}
    assert set(data) - {"defaults"} == fields  # a Hydra defaults list (compress composes its steps' YAMLs)


def test_registry_and_method_yamls_match():
    assert set(registry.METHODS) == set(options("method"))


def yaml_files():
    return sorted(p for p in CONF_DIR.rglob("*.yaml") if "experiment" not in p.parts)


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(CONF_DIR)))
def test_every_top_level_key_has_a_comment(path):
    if path.parts[-3:-1] == ("conf", "hydra") or "hydra" in path.relative_to(CONF_DIR).parts:
        pytest.skip("Hydra's own config schema")
    for line in path.read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")) and ":" in line:
            assert "#" in line, f"{path.name}: key without a comment: {line!r}"


def experiment_names():
    recipes = ROOT / "recipes"
    return sorted(str(p.relative_to(recipes).with_suffix("")) for p in recipes.rglob("*.yaml"))


@pytest.mark.parametrize("name", experiment_names() or [pytest.param("", marks=pytest.mark.skip("no recipes"))])
def test_every_experiment_composes(name, tmp_path):
    cfg = compose([f"+experiment={name}"])
    make_context(cfg, tmp_path)


def test_unknown_keys_fail_loudly(tmp_path):
    from runner.errors import UserError

    cfg = compose(["+method.foo=1"])
    with pytest.raises(UserError, match="unknown key method.foo; valid keys: name"):
        make_context(cfg, tmp_path)
    cfg = compose(["train.epochs=abc"])
    with pytest.raises(UserError, match="train.epochs: 'abc' is not a valid float"):
        make_context(cfg, tmp_path)


def test_run_tag():
    from runner.results import run_tag

    assert run_tag("") == "default"
    assert run_tag("train.lr=0.0001") == "train.lr=0.0001"
    long = ",".join(f"k{i}=v{i}" for i in range(40))
    assert len(run_tag(long)) <= 59 and run_tag(long) == run_tag(long)
    assert Path(run_tag("task=glue/sst2")).name == "task=glue_sst2"
