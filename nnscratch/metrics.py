"""The paper's evaluation framework, from the confusion matrix and the class scores.

Quality: accuracy, precision, recall, F1. Efficacy: sensitivity (= recall) and
specificity. Plus balanced accuracy and one-vs-rest ROC AUC (MedMNIST's headline
metric beside accuracy). Conventions follow scikit-learn: a ratio whose
denominator is 0 counts as 0; an AUC is undefined (None) for a class that is
absent or is the only one present, and the macro AUC averages the defined ones.
"""
from __future__ import annotations

import numpy as np

from .medmnist_info import short_label


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(K, K) int counts: row = true class, column = predicted class."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def _ratio(num, den):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def roc_auc(is_positive, scores) -> float | None:
    """Area under the ROC curve of ``scores`` for a binary truth, by the rank-sum
    (Mann-Whitney U) formula with average ranks for ties; None if one class is absent."""
    is_positive = np.asarray(is_positive, dtype=bool)
    n_pos = int(is_positive.sum())
    n_neg = is_positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size)
    # average rank within each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0      # 1-based ranks s+1 .. e, averaged
    u = ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


TASKS = ("multi-class", "binary-class", "ordinal-regression", "multi-label, binary-class")


def medmnist_scores(task: str, y_true, scores, threshold: float = 0.5) -> dict:
    """{"medmnist_acc", "medmnist_auc"} as MedMNIST's evaluator defines them (``medmnist/evaluator.py``),
    so that results compare with its benchmark tables:

    - "multi-label, binary-class": y_true (N, L) of 0 and 1, scores (N, L) per-label probabilities;
      accuracy = the mean over labels of each label's accuracy with score >= threshold as positive,
      AUC = the mean over labels of each label's ROC AUC;
    - "binary-class": y_true (N,), scores (N, K): the last column is the positive class's; accuracy
      with score > threshold as positive, its ROC AUC;
    - "multi-class", "ordinal-regression": y_true (N,), scores (N, K); arg-max accuracy, the mean over
      classes of the one-vs-rest ROC AUCs.

    The AUC is None where one is undefined (a label or class with one kind of truth only), where
    scikit-learn, which MedMNIST calls, raises.
    """
    if task not in TASKS:
        raise ValueError(f"medmnist_scores: unknown task {task!r}: expected one of {', '.join(TASKS)}")
    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != y_true.shape[0]:
        raise ValueError(f"medmnist_scores: expected scores (N, K) for {y_true.shape[0]} samples, got {scores.shape}")
    if task == "multi-label, binary-class":
        if y_true.shape != scores.shape:
            raise ValueError(f"medmnist_scores: expected labels of the scores' shape {scores.shape}, got {y_true.shape}")
        acc = float(np.mean([np.mean((scores[:, j] >= threshold) == (y_true[:, j] == 1)) for j in range(scores.shape[1])]))
        aucs = [roc_auc(y_true[:, j] == 1, scores[:, j]) for j in range(scores.shape[1])]
    elif task == "binary-class":
        positive = scores[:, -1]
        acc = float(np.mean((positive > threshold) == (y_true.reshape(-1) == 1)))
        aucs = [roc_auc(y_true.reshape(-1) == 1, positive)]
    else:
        y = y_true.reshape(-1)
        acc = float(np.mean(scores.argmax(axis=1) == y))
        aucs = [roc_auc(y == k, scores[:, k]) for k in range(scores.shape[1])]
    auc = None if any(a is None for a in aucs) else float(np.mean(aucs))
    return {"medmnist_acc": acc, "medmnist_auc": auc}


def classification_report(y_true, scores, label_names) -> dict:
    """Everything ``metrics.json`` holds but the timing.

    y_true: (N,) int labels; scores: (N, K) class probabilities (or any scores
    whose arg-max is the prediction); label_names: K names.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    K = len(label_names)
    if scores.ndim != 2 or scores.shape != (y_true.shape[0], K):
        raise ValueError(f"classification_report: expected scores of shape ({y_true.shape[0]}, {K}), "
                         f"got {scores.shape}")
    y_pred = scores.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, K)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)                     # true members of each class
    predicted = cm.sum(axis=0)
    fp, fn = predicted - tp, support - tp
    tn = cm.sum() - tp - fp - fn
    precision, recall, specificity = _ratio(tp, predicted), _ratio(tp, support), _ratio(tn, tn + fp)
    f1 = _ratio(2 * precision * recall, precision + recall)
    aucs = [roc_auc(y_true == k, scores[:, k]) for k in range(K)]
    weights = support / max(support.sum(), 1)
    defined = [a for a in aucs if a is not None]

    def averages(values):
        return {"macro": float(np.mean(values)), "weighted": float(np.sum(weights * values))}
    per = {"precision": precision, "recall": recall, "f1": f1, "specificity": specificity}
    return {
        "num_samples": int(y_true.size),
        "accuracy": float(tp.sum() / max(y_true.size, 1)),
        "balanced_accuracy": float(recall[support > 0].mean()) if (support > 0).any() else 0.0,
        "macro": {k: averages(v)["macro"] for k, v in per.items()},
        "weighted": {k: averages(v)["weighted"] for k, v in per.items()},
        "auc": float(np.mean(defined)) if defined else None,
        "per_class": [
            {"label": k, "name": label_names[k], "support": int(support[k]), "precision": float(precision[k]),
             "recall": float(recall[k]), "sensitivity": float(recall[k]), "f1": float(f1[k]),
             "specificity": float(specificity[k]), "auc": aucs[k]}
            for k in range(K)],
        "confusion_matrix": cm.tolist(),
    }


def multilabel_report(y_true, probs, label_names, threshold: float = 0.5) -> dict:
    """``metrics.json`` for a multi-label task: y_true (N, L) of 0 and 1, probs (N, L) per-label
    probabilities, a label predicted where its probability is >= threshold (MedMNIST's rule).
    "accuracy" is the mean over labels of each label's accuracy (MedMNIST's ACC), "exact_match" the
    share of images with every label right, "auc" the mean of the labels' ROC AUCs (None where one is
    undefined); per label: support (positives), precision, recall, F1, specificity, AUC."""
    y_true = np.asarray(y_true).astype(bool)
    probs = np.asarray(probs, dtype=np.float64)
    L = len(label_names)
    if probs.shape != y_true.shape or probs.ndim != 2 or probs.shape[1] != L:
        raise ValueError(f"multilabel_report: expected labels and probabilities of shape (N, {L}), got "
                         f"{y_true.shape} and {probs.shape}")
    pred = probs >= threshold
    tp = (pred & y_true).sum(axis=0).astype(np.float64)
    fp = (pred & ~y_true).sum(axis=0).astype(np.float64)
    fn = (~pred & y_true).sum(axis=0).astype(np.float64)
    tn = (~pred & ~y_true).sum(axis=0).astype(np.float64)
    precision, recall, specificity = _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    f1 = _ratio(2 * precision * recall, precision + recall)
    aucs = [roc_auc(y_true[:, j], probs[:, j]) for j in range(L)]
    support = y_true.sum(axis=0)
    weights = support / max(support.sum(), 1)
    per = {"precision": precision, "recall": recall, "f1": f1, "specificity": specificity}
    defined = [a for a in aucs if a is not None]
    return {
        "num_samples": int(y_true.shape[0]),
        "accuracy": float((pred == y_true).mean()) if y_true.size else 0.0,
        "exact_match": float((pred == y_true).all(axis=1).mean()) if y_true.size else 0.0,
        "macro": {k: float(np.mean(v)) for k, v in per.items()},
        "weighted": {k: float(np.sum(weights * v)) for k, v in per.items()},
        "auc": float(np.mean(defined)) if defined and len(defined) == L else None,
        "per_class": [
            {"label": j, "name": label_names[j], "support": int(support[j]), "precision": float(precision[j]),
             "recall": float(recall[j]), "sensitivity": float(recall[j]), "f1": float(f1[j]),
             "specificity": float(specificity[j]), "auc": aucs[j]}
            for j in range(L)],
    }


def format_report(report: dict, title: str = "") -> str:
    """The report as a plain-text table, for the terminal."""
    lines = [title] if title else []
    auc = report['auc'] if report['auc'] is None else format(report['auc'], '.4f')
    if "exact_match" in report:         # a multi-label report: rows are labels
        lines.append(f"accuracy (mean over labels) {report['accuracy']:.4f}   every label right "
                     f"{report['exact_match']:.4f}   macro AUC {auc}")
    else:
        lines.append(f"accuracy {report['accuracy']:.4f}   balanced accuracy {report['balanced_accuracy']:.4f}   "
                     f"macro AUC {auc}")
    head = f"{'class':<26}{'support':>8}{'precision':>10}{'recall':>8}{'f1':>8}{'specif.':>9}{'auc':>8}"
    lines += [head, "-" * len(head)]
    for c in report["per_class"]:
        auc = "-" if c["auc"] is None else f"{c['auc']:.4f}"
        name = f"{c['label']} {short_label(c['name'])}"
        lines.append(f"{name[:25]:<26}{c['support']:>8}{c['precision']:>10.4f}{c['recall']:>8.4f}"
                     f"{c['f1']:>8.4f}{c['specificity']:>9.4f}{auc:>8}")
    lines.append("-" * len(head))
    for avg in ("macro", "weighted"):
        a = report[avg]
        lines.append(f"{avg + ' average':<26}{report['num_samples']:>8}{a['precision']:>10.4f}{a['recall']:>8.4f}"
                     f"{a['f1']:>8.4f}{a['specificity']:>9.4f}")
    return "\n".join(lines)
