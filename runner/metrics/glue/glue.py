"""GLUE metrics as a local `evaluate` module: evaluate.load("<this folder>") works offline.

evaluate copies this file into its modules cache and imports it from there, so it must stand alone:
no imports from runner. Predictions and references are float64 (exact for integer class ids too);
classification metrics check that the values are whole numbers.

f1 is binary (positive class 1) for two classes and macro-averaged for more; two classes means
num_labels=2 when given, else at most two distinct values among references and predictions.
"""

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

CLASSIFICATION = ("accuracy", "f1", "matthews_correlation")
REGRESSION = ("pearson", "spearmanr")

_DESCRIPTION = "Accuracy, F1, Matthews correlation, Pearson and Spearman correlation for GLUE-style tasks."
_KWARGS_DESCRIPTION = """
Args:
    predictions: class ids (classification) or scores (regression).
    references: gold class ids or scores.
    metrics: names to compute, from accuracy, f1, matthews_correlation, pearson, spearmanr.
    num_labels: number of classes; picks binary (2) or macro (>2) f1.
Returns:
    a dict name -> float.
"""


class Glue(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Value("float64"),
                "references": datasets.Value("float64"),
            }),
        )

    def _compute(self, predictions, references, metrics=("accuracy",), num_labels=None):
        unknown = [m for m in metrics if m not in CLASSIFICATION + REGRESSION]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {', '.join(CLASSIFICATION + REGRESSION)}")
        predictions = np.asarray(predictions, dtype=np.float64)
        references = np.asarray(references, dtype=np.float64)
        results = {}
        if any(m in CLASSIFICATION for m in metrics):
            for values in (predictions, references):
                if not np.all(values == np.round(values)):
                    raise ValueError("classification metrics need class ids; got non-integer values")
            y_pred, y_true = predictions.astype(np.int64), references.astype(np.int64)
            classes = num_labels or len(set(y_true.tolist()) | set(y_pred.tolist()))
            for name in metrics:
                if name == "accuracy":
                    results[name] = float(accuracy_score(y_true, y_pred))
                elif name == "f1":
                    average = "binary" if classes <= 2 else "macro"
                    results[name] = float(f1_score(y_true, y_pred, average=average, zero_division=0))
                elif name == "matthews_correlation":
                    results[name] = float(matthews_corrcoef(y_true, y_pred))
        for name in metrics:
            if name == "pearson":
                results[name] = float(pearsonr(references, predictions)[0])
            elif name == "spearmanr":
                results[name] = float(spearmanr(references, predictions)[0])
        return {name: results[name] for name in metrics}
