"""The README's tables say what conf/ holds: every option of every group, every method, and the
SLURM launcher keys with their defaults. A new option without its README row (or a stale row) fails."""

from __future__ import annotations

import re

import yaml

from tests.conftest import CONF_DIR, ROOT

README = (ROOT / "README.md").read_text()


def options(group: str) -> set[str]:
    base = CONF_DIR / group
    return {str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml")}


def expand(token: str) -> set[str]:
    """`glue/{cola,sst2}` -> {glue/cola, glue/sst2}."""
    match = re.fullmatch(r"(.*)\{([^}]*)\}(.*)", token)
    if not match:
        return {token}
    head, alternatives, tail = match.groups()
    return {f"{head}{a.strip()}{tail}" for a in alternatives.split(",")}


def table_rows(header: str) -> dict[str, str]:
    """First-column key -> the rest of the row, for the markdown table whose header row starts with `header`."""
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        first, rest = line.strip("|").split("|", 1)
        rows[first.strip()] = rest
    return rows


def named_options(cell: str) -> set[str]:
    """Backticked option names in a cell (environment variables such as `WANDB_API_KEY` are not options)."""
    names = set()
    for token in re.findall(r"`([^`]+)`", cell):
        if not token.isupper():
            names |= expand(token)
    return names


def test_config_group_table_lists_exactly_the_options_in_conf():
    rows = table_rows("| group | options | code |")
    for group in ("model", "method", "task", "hardware", "logger", "train"):
        cell = rows[f"`{group}`"].rsplit("|", 1)[0]
        listed = named_options(cell) if group != "train" else {"default"}
        assert listed == options(group), f"README `{group}` row: missing {options(group) - listed}, " \
                                         f"stale {listed - options(group)}"
    assert set(rows) == {f"`{g}`" for g in ("model", "teacher", "method", "task", "train", "hardware", "logger")}
    assert "`none` (default), or any `model` option" in rows["`teacher`"]
    assert options("teacher") == options("model") | {"none"}


def test_every_method_has_a_readme_mention_and_a_registry_line():
    from runner import registry

    assert set(registry.METHODS) == options("method")
    for method in registry.METHODS:
        assert f"`{method}`" in README, f"README does not mention method `{method}`"


def test_slurm_launcher_table_matches_its_yaml():
    conf = yaml.safe_load((CONF_DIR / "hydra" / "launcher" / "slurm.yaml").read_text())
    rows = table_rows("| key | default | sbatch / meaning |")
    for keys, rest in rows.items():
        default = rest.split("|")[0].strip().split(" (")[0].strip("`")
        for key in re.findall(r"`([^`]+)`", keys):
            assert key in conf, f"README lists launcher key {key}, conf/hydra/launcher/slurm.yaml has none"
            value = conf[key]
            shown = "null" if value is None else str(value).replace("'", "").replace(" ", "")
            assert default.replace(" ", "") == shown, f"{key}: README {default}, yaml {value}"


def test_adding_a_method_names_its_files():
    section = README.split("## Adding a method", 1)[1].split("\n## ", 1)[0]
    for needed in ("runner/methods/<name>.py", "conf/method/<name>.yaml", "runner/registry.py", "tests/"):
        assert needed in section
