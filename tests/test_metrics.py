"""runner.metrics: the local evaluate module against sklearn/scipy, and the Trainer hook."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from runner import metrics
from runner.tasks import TaskConfig

Y_TRUE = [0, 1, 1, 0, 1, 1, 0, 0, 1, 0]
Y_PRED = [0, 1, 0, 0, 1, 1, 1, 0, 1, 1]


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_binary_classification_matches_hand_computed():
    result = metrics.compute(["accuracy", "f1", "matthews_correlation"], Y_PRED, Y_TRUE, num_labels=2)
    # By hand: tp=4 fp=2 fn=1 tn=3 -> accuracy 7/10, f1 2*4/(2*4+2+1) = 8/11,
    # mcc (4*3 - 2*1) / sqrt(6*5*5*4) = 10/sqrt(600)
    assert list(result) == ["accuracy", "f1", "matthews_correlation"]
    assert result["accuracy"] == pytest.approx(0.7)
    assert result["f1"] == pytest.approx(8 / 11) == f1_score(Y_TRUE, Y_PRED)
    assert result["matthews_correlation"] == pytest.approx(10 / math.sqrt(600))
    assert result["matthews_correlation"] == pytest.approx(matthews_corrcoef(Y_TRUE, Y_PRED))
    assert all(isinstance(v, float) for v in result.values())


def test_multiclass_f1_is_macro():
    y_true, y_pred = [0, 1, 2, 2, 1, 0, 2], [0, 2, 2, 2, 1, 1, 0]
    result = metrics.compute(["f1", "accuracy"], y_pred, y_true, num_labels=3)
    assert result["f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert result["accuracy"] == pytest.approx(4 / 7)
    # without num_labels, the number of distinct values decides
    assert metrics.compute(["f1"], y_pred, y_true)["f1"] == pytest.approx(result["f1"])


def test_regression_matches_scipy():
    rng = np.random.default_rng(0)
    refs = rng.uniform(0, 5, size=50)
    preds = refs + rng.normal(0, 1, size=50)
    result = metrics.compute(["pearson", "spearmanr"], preds, refs)
    assert result["pearson"] == pytest.approx(pearsonr(refs, preds)[0], abs=1e-12)
    assert result["spearmanr"] == pytest.approx(spearmanr(refs, preds)[0], abs=1e-12)
    # three points by hand: x = (1, 2, 3), y = (1, 3, 2) -> pearson 0.5, spearman 0.5
    assert metrics.compute(["pearson", "spearmanr"], [1, 3, 2], [1, 2, 3]) == pytest.approx(
        {"pearson": 0.5, "spearmanr": 0.5})


def test_bad_inputs_fail_loudly():
    with pytest.raises(ValueError, match="unknown metrics"):
        metrics.compute(["bleu"], [1], [1])
    with pytest.raises(ValueError, match="eval loss"):
        metrics.compute(["perplexity"], [1], [1])
    with pytest.raises(ValueError, match="class ids"):
        metrics.compute(["accuracy"], [0.3, 1.0], [0, 1])
    with pytest.raises(ValueError, match="references"):
        metrics.compute(["accuracy"], [0, 1, 1], [0, 1])


def test_compute_metrics_fn_for_trainer():
    from transformers import EvalPrediction

    classification = TaskConfig(name="t", subset="sst2", metrics=["accuracy", "f1"], main_metric="accuracy")
    logits = np.array([[2.0, -1.0], [0.1, 0.3], [1.0, 0.0], [-3.0, 3.0]])
    labels = np.array([0, 1, 1, 1])
    fn = metrics.compute_metrics_fn(classification)
    result = fn(EvalPrediction(predictions=(logits, np.zeros((4, 3))), label_ids=labels))
    assert result == pytest.approx({"accuracy": 0.75, "f1": f1_score(labels, [0, 1, 0, 1])})

    regression = TaskConfig(name="r", subset="stsb", num_labels=1, metrics=["pearson"], main_metric="pearson")
    scores = np.array([[0.5], [2.0], [4.5], [3.0]], dtype=np.float32)
    refs = np.array([1.0, 2.0, 5.0, 2.5], dtype=np.float32)
    result = metrics.compute_metrics_fn(regression)(EvalPrediction(predictions=scores, label_ids=refs))
    assert result["pearson"] == pytest.approx(pearsonr(refs, scores.reshape(-1))[0], rel=1e-6)

    mlm = TaskConfig(name="m", loader="text", num_labels=0, metrics=["perplexity"], main_metric="perplexity",
                     text_fields=["text"], mlm_probability=0.15, files={"train": "a", "validation": "b"})
    assert metrics.compute_metrics_fn(mlm) is None
    assert metrics.perplexity(math.log(20.0)) == pytest.approx(20.0) and metrics.perplexity(1e6) == math.inf


def test_metric_module_loads_by_path_offline():
    import evaluate

    module = evaluate.load(str(metrics.GLUE_METRIC_DIR), keep_in_memory=True)
    assert module.compute(predictions=[1, 0], references=[1, 1], metrics=["accuracy"]) == {"accuracy": 0.5}
