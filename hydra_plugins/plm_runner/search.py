"""hydra/sweeper=search: hydra-optuna-sweeper's Optuna sweeper, which must not crash on failed trials.

A failed job reaches the sweeper as None (runner/sweep.py): Optuna records that trial as FAIL and the
study goes on. The one crash left is at the end, when no trial completed at all (`study.best_trial`
raises); that case is logged here and the sweep summary names each failure. Imported at every start-up
(plugin discovery): optuna itself is imported only when a study starts.
"""

from __future__ import annotations

import logging

log = logging.getLogger("runner")

try:  # the `search` extra (hydra-optuna-sweeper)
    from hydra_plugins.hydra_optuna_sweeper import optuna_sweeper as plugin
except ImportError:  # pragma: no cover
    plugin = None

if plugin is not None:

    class OptunaSweeper(plugin.OptunaSweeper):
        """hydra/sweeper=search (conf/hydra/sweeper/search.yaml)."""

        def sweep(self, arguments: list[str]) -> None:
            try:
                return super().sweep(arguments)
            except ValueError as e:
                if "No trials are completed yet" not in str(e):
                    raise
                log.error("optuna: no trial completed, so there is no best one (see the sweep summary)")
