"""Metrics against scikit-learn (a test-only oracle) on random predictions."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nnscratch.metrics import classification_report, confusion_matrix, format_report, roc_auc

skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the oracle here: pip install -e '.[test]'")


def random_case(seed, n, K, ties):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    logits = rng.standard_normal((n, K)) * 2
    if ties:
        logits = np.round(logits)              # equal scores exercise the tie handling of the AUC
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


@given(st.integers(0, 2**32 - 1), st.integers(1, 300), st.integers(2, 9), st.booleans())
def test_report_matches_scikit_learn(seed, n, K, ties):
    y, probs = random_case(seed, n, K, ties)
    names = [f"c{k}" for k in range(K)]
    rep = classification_report(y, probs, names)
    pred = probs.argmax(axis=1)
    labels = list(range(K))
    cm = skm.confusion_matrix(y, pred, labels=labels)
    assert rep["confusion_matrix"] == cm.tolist()
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    present = np.unique(y)
    # balanced accuracy: mean recall over the classes present in y_true
    assert rep["balanced_accuracy"] == pytest.approx(skm.recall_score(y, pred, labels=present, average="macro",
                                                                      zero_division=0))
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y, pred, labels=labels, average=avg, zero_division=0)
        assert rep[avg]["precision"] == pytest.approx(p)
        assert rep[avg]["recall"] == pytest.approx(r)
        assert rep[avg]["f1"] == pytest.approx(f)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for k, c in enumerate(rep["per_class"]):
        assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx((p[k], r[k], f[k], s[k]))
        tn = cm.sum() - cm[k].sum() - cm[:, k].sum() + cm[k, k]
        fp = cm[:, k].sum() - cm[k, k]
        assert c["specificity"] == pytest.approx(tn / (tn + fp) if tn + fp else 0.0)
        assert c["sensitivity"] == c["recall"]
        if 0 < (y == k).sum() < n:
            assert c["auc"] == pytest.approx(skm.roc_auc_score(y == k, probs[:, k]))
        else:
            assert c["auc"] is None
    if len(present) == K:
        # macro one-vs-rest: the mean of the classes' AUCs (scikit-learn's "ovr" needs K > 2; with two
        # classes the two AUCs agree up to ties that rounding makes in one column and not the other)
        expected = (np.mean([skm.roc_auc_score(y == k, probs[:, k]) for k in range(K)]) if K == 2
                    else skm.roc_auc_score(y, probs, multi_class="ovr"))
        assert rep["auc"] == pytest.approx(expected)


def test_confusion_matrix_rows_are_truth_columns_are_predictions():
    np.testing.assert_array_equal(confusion_matrix([0, 0, 1, 2], [0, 1, 1, 0], 3), [[1, 1, 0], [0, 1, 0], [1, 0, 0]])


def test_roc_auc_of_a_perfect_and_a_reversed_ranking():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 0, 1, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert roc_auc([1, 1], [0.2, 0.3]) is None


def test_report_refuses_scores_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"expected scores of shape \(3, 2\)"):
        classification_report([0, 1, 1], np.zeros((3, 3)), ["a", "b"])


def test_format_report_lists_every_class_and_the_averages():
    y, probs = random_case(0, 50, 3, False)
    text = format_report(classification_report(y, probs, ["red", "green", "blue"]), "title")
    assert text.startswith("title") and "green" in text and "macro average" in text and "weighted average" in text
