"""Hydra's own errors (typos in keys, unknown config options, unparsable overrides) as one line each.

Hydra composes the config before runner/run.py sees it, and reports a failed composition as a
multi-line message (with a search path, or a `+key=value` hint that then fails in runner/config.py).
`install()` wraps Hydra's reporting function so that these errors print the same one line as every other
bad input (`error: ...`, naming the fix; exit status 2). Any other exception keeps Hydra's report.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from runner.config import closest, unknown_key_message

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
EXIT_STATUS = 2


def group_options(group: str, known: Iterable[str] = ()) -> list[str]:
    """Every option of a config group: conf/<group>/**/*.yaml as `sub/name`, plus those Hydra knows."""
    folder = CONF_DIR / group
    found = set(known)
    if folder.is_dir():
        found |= {str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml")}
    return sorted(found)


def explain(error: BaseException) -> str | None:
    """One line for a Hydra composition or override error; None for anything else."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, name = error.missing_cfg_file.rpartition("/")
        if not group:
            return None
        # task/glue/sst3: the group is the top folder (task), the option its path below (glue/sst3).
        top = group.split("/")[0] if not group.startswith("hydra/") else group
        option = error.missing_cfg_file[len(top) + 1:]
        options = group_options(top, error.options or ())
        hint = closest(option, options)
        did_you_mean = f"; did you mean {top}={hint}?" if hint else ";"
        return f"unknown {top} option {option!r}{did_you_mean} available: {', '.join(options)}"
    cause = error.__cause__
    if isinstance(error, ConfigCompositionException) and getattr(cause, "full_key", None):
        parent = getattr(cause, "parent_node", None)
        valid = [k for k in (parent.keys() if parent is not None else ()) if k != "hydra"]
        full_key = str(cause.full_key)
        where, _, leaf = full_key.rpartition(".")
        if valid:
            return unknown_key_message(where, [leaf], [str(k) for k in valid])
    if isinstance(error, OverrideParseException):
        reason = _first_line(error.message)
        return (f"cannot parse override {error.override!r} ({reason}); fix its syntax or quote it "
                "(see https://hydra.cc/docs/advanced/override_grammar/basic/)")
    if isinstance(error, ConfigCompositionException):
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        return " ".join(lines[:3]) if lines else None
    return None


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "?")


def _guard(report: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def run_and_report(func: Callable[[], Any]) -> Any:
        def guarded() -> Any:
            try:
                return func()
            except Exception as error:  # noqa: BLE001 - anything not explained goes on to Hydra's report
                message = explain(error)
                if message is None:
                    raise
                print(f"error: {message}", file=sys.stderr)
                sys.exit(EXIT_STATUS)

        return report(guarded)

    run_and_report.plm_runner_guard = True  # type: ignore[attr-defined]
    return run_and_report


def install() -> None:
    """Route Hydra's composition errors through `explain` (idempotent)."""
    import hydra._internal.utils as hydra_utils

    if not getattr(hydra_utils.run_and_report, "plm_runner_guard", False):
        hydra_utils.run_and_report = _guard(hydra_utils.run_and_report)
