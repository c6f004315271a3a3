"""Task metrics through a local `evaluate` module (runner/metrics/glue/glue.py), loaded by path so it
works offline. evaluate and numpy are imported inside the functions: importing this package is cheap.

    metrics.compute(["accuracy", "f1"], predictions=[1, 0], references=[1, 1])
    Trainer(..., compute_metrics=metrics.compute_metrics_fn(task))

Masked-LM tasks report "perplexity" = exp(eval loss): the Trainer's eval_loss, not predictions, is its
input, so `perplexity(eval_loss)` computes it and compute_metrics_fn returns None for those tasks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

GLUE_METRIC_DIR = Path(__file__).resolve().parent / "glue"
PREDICTION_METRICS = ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr")
KNOWN_METRICS = (*PREDICTION_METRICS, "perplexity")


@functools.cache
def glue_metric() -> Any:
    """The evaluate module, loaded once per process (evaluate copies and hashes the script on load)."""
    import evaluate

    # keep_in_memory: no arrow cache files under ~/.cache for a metric computed once per evaluation.
    return evaluate.load(str(GLUE_METRIC_DIR), keep_in_memory=True)


def compute(names: Sequence[str], predictions: Any, references: Any, *,
            num_labels: int | None = None) -> dict[str, float]:
    """name -> value for class ids or scores; num_labels=2 gives binary f1, more gives macro f1."""
    import numpy as np

    names = list(names)
    unknown = [n for n in names if n not in PREDICTION_METRICS]
    if unknown:
        hint = " (perplexity comes from the eval loss: runner.metrics.perplexity)" if "perplexity" in unknown else ""
        raise ValueError(f"unknown metrics {unknown}; known: {', '.join(PREDICTION_METRICS)}{hint}")
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    references = np.asarray(references, dtype=np.float64).reshape(-1)
    if predictions.shape != references.shape:
        raise ValueError(f"{predictions.size} predictions but {references.size} references")
    return glue_metric().compute(predictions=predictions, references=references, metrics=names,
                                 num_labels=num_labels)


def perplexity(eval_loss: float) -> float:
    try:
        return math.exp(eval_loss)
    except OverflowError:
        return math.inf


def compute_metrics_fn(task: Any) -> Callable[[Any], dict[str, float]] | None:
    """A `compute_metrics(EvalPrediction)` for HF Trainer; None for masked-LM tasks (see module doc).

    Classification: argmax over the last axis of the logits. Regression: the (n, 1) output squeezed.
    """
    if task.is_mlm:
        return None
    names = list(task.metrics)
    regression = bool(task.is_regression)
    num_labels = task.num_labels

    def compute_metrics(eval_prediction: Any) -> dict[str, float]:
        import numpy as np

        predictions, references = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, tuple | list):  # models that also return hidden states or attentions
            predictions = predictions[0]
        predictions = np.asarray(predictions)
        predictions = predictions.reshape(-1) if regression else predictions.argmax(axis=-1)
        return compute(names, predictions, references, num_labels=None if regression else num_labels)

    return compute_metrics
