"""Classification metrics (scikit-learn underneath) and the original design's success criteria."""

from __future__ import annotations

from typing import Any

import numpy as np

# The original design's success criteria, as (name, target description).
CRITERIA = {
    "val_f1_min": 0.85,  # validation macro-F1 must exceed this (target 0.90, stretch 0.93)
    "val_f1_target": 0.90,
    "val_f1_stretch": 0.93,
    "class_f1_min": 0.75,  # every class F1 must exceed this (target 0.80)
    "class_f1_target": 0.80,
    "gap_max": 0.02,  # test macro-F1 within 2 points of validation macro-F1
}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> tuple[float, list[dict]]:
    """ECE over equal-width confidence bins, and the bins themselves (for a reliability diagram)."""
    confidence = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece, bins = 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi) if lo > 0 else (confidence >= lo) & (confidence <= hi)
        n = int(in_bin.sum())
        if n:
            acc, conf = float(correct[in_bin].mean()), float(confidence[in_bin].mean())
            ece += n / len(labels) * abs(acc - conf)
        else:
            acc = conf = None
        bins.append({"lo": float(lo), "hi": float(hi), "n": n, "accuracy": acc, "confidence": conf})
    return float(ece), bins


def classification_metrics(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, per-class P/R/F1/support, one-vs-rest macro AUC, ECE, confusion matrix.

    ``probs`` are probabilities over ``classes`` (rows need not sum to exactly 1).
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / np.clip(probs.sum(1, keepdims=True), 1e-12, None)
    pred = probs.argmax(1)
    ids = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, pred, labels=ids, zero_division=0)
    present = np.unique(labels)
    auc = None
    if len(present) > 1:
        try:
            if len(classes) == 2:
                auc = float(roc_auc_score(labels, probs[:, 1]))
            else:
                # Only classes present in the labels can have a ROC curve; average over those.
                aucs = [roc_auc_score(labels == c, probs[:, c]) for c in present]
                auc = float(np.mean(aucs))
        except ValueError:
            auc = None
    ece, bins = expected_calibration_error(probs, labels)
    return {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, pred)),
        # sklearn's balanced accuracy (mean recall over the classes present), without its warnings for a set of
        # one class or predictions outside the present classes
        "balanced_accuracy": float(np.mean(recall[present])) if len(labels) else 0.0,
        "macro_f1": float(f1_score(labels, pred, labels=ids, average="macro", zero_division=0)),
        "macro_auc_ovr": auc,
        "ece": ece,
        "per_class": {
            c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": confusion_matrix(labels, pred, labels=ids).tolist(),
        "reliability_bins": bins,
        "classes": list(classes),
    }


def success_criteria(val_f1: float, class_f1: dict[str, float], test_f1: float | None) -> list[dict[str, Any]]:
    """The original design's criteria, each with its measured value and pass/fail."""
    c = CRITERIA
    worst_class = min(class_f1, key=class_f1.get) if class_f1 else None
    worst = class_f1[worst_class] if worst_class else None
    rows = [
        {"criterion": f"validation macro-F1 > {c['val_f1_min']:.0%}", "value": val_f1,
         "pass": val_f1 > c["val_f1_min"]},
        {"criterion": f"validation macro-F1 ≥ {c['val_f1_target']:.0%} (target)", "value": val_f1,
         "pass": val_f1 >= c["val_f1_target"]},
        {"criterion": f"validation macro-F1 ≥ {c['val_f1_stretch']:.0%} (stretch)", "value": val_f1,
         "pass": val_f1 >= c["val_f1_stretch"]},
        {"criterion": f"every class F1 > {c['class_f1_min']:.0%} (lowest: {worst_class})", "value": worst,
         "pass": worst is not None and worst > c["class_f1_min"]},
        {"criterion": f"every class F1 ≥ {c['class_f1_target']:.0%} (target)", "value": worst,
         "pass": worst is not None and worst >= c["class_f1_target"]},
    ]  # fmt: skip
    if test_f1 is not None:
        gap = val_f1 - test_f1
        rows.append({"criterion": f"test macro-F1 within {c['gap_max'] * 100:.0f} points of validation", "value": gap,
                     "unit": "points", "pass": abs(gap) <= c["gap_max"]})  # fmt: skip
    return rows
