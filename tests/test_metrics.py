"""ClassifierMetrics against hand-computed examples, scikit-learn, and its validation errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mlwidgets.metrics import ClassifierMetrics

CLASSES = ("cat", "dog", "bird")
# Confusion worked out by hand (rows true, columns predicted):
#        cat dog bird
#  cat     2   1    0
#  dog     1   1    0
#  bird    1   0    1
LABELS = ("cat", "cat", "cat", "dog", "dog", "bird", "bird")
PREDICTED = ("cat", "cat", "dog", "dog", "cat", "bird", "cat")
PROBABILITIES = np.array(
    [
        [0.9, 0.05, 0.05],  # p(label) 0.9
        [0.6, 0.3, 0.1],  # 0.6
        [0.3, 0.6, 0.1],  # 0.3
        [0.2, 0.7, 0.1],  # 0.7
        [0.8, 0.2, 0.0],  # 0.2
        [0.1, 0.1, 0.8],  # 0.8
        [1.0, 0.0, 0.0],  # 0.0 -> loss clipped at -log(1e-12)
    ]
)
SOURCES = tuple(f"img{i}.png" for i in range(7))


@pytest.fixture
def metrics() -> ClassifierMetrics:
    return ClassifierMetrics.from_predictions(CLASSES, LABELS, PREDICTED, PROBABILITIES, SOURCES)


def test_accuracy_and_error(metrics):
    assert metrics.accuracy == pytest.approx(4 / 7)
    assert metrics.classification_error == pytest.approx(3 / 7)


def test_confusion_cells(metrics):
    confusion = metrics.confusion
    assert list(confusion.index) == list(CLASSES)
    assert list(confusion.columns) == list(CLASSES)
    assert confusion.index.name == "true" and confusion.columns.name == "predicted"
    assert confusion.to_numpy().tolist() == [[2, 1, 0], [1, 1, 0], [1, 0, 1]]
    assert all(pd.api.types.is_integer_dtype(t) for t in confusion.dtypes)
    # Editing the returned frame must not change the metrics.
    confusion.loc["cat", "cat"] = 99
    assert metrics.confusion.loc["cat", "cat"] == 2


def test_precision_recall_by_hand(metrics):
    table = metrics.precision_recall
    assert list(table.index) == list(CLASSES)
    assert list(table.columns) == ["precision", "recall", "f1", "support"]
    assert table["precision"].tolist() == pytest.approx([2 / 4, 1 / 2, 1 / 1])
    assert table["recall"].tolist() == pytest.approx([2 / 3, 1 / 2, 1 / 2])
    assert table["f1"].tolist() == pytest.approx([4 / 7, 1 / 2, 2 / 3])
    assert table["support"].tolist() == [3, 2, 2]


def test_zero_support_and_never_predicted_are_zero_not_nan():
    # "b" has support but is never predicted; "c" is predicted but has no support;
    # "d" neither, yet still appears in every table.
    m = ClassifierMetrics.from_predictions("abcd", "aab", "acc")
    table = m.precision_recall
    assert not table.isna().any().any()
    assert table.loc["a"].tolist() == pytest.approx([1.0, 0.5, 2 / 3, 2])
    assert table.loc["b"].tolist() == [0.0, 0.0, 0.0, 1]
    assert table.loc["c"].tolist() == [0.0, 0.0, 0.0, 0]
    assert table.loc["d"].tolist() == [0.0, 0.0, 0.0, 0]
    assert m.confusion.shape == (4, 4)
    assert m.confusion.loc["d"].sum() == 0 and m.confusion["d"].sum() == 0


def test_matches_sklearn_on_random_example():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(6)]
    # Skewed draws so some classes are rare or absent in labels / predictions.
    labels = rng.choice(classes[:5], size=200, p=[0.4, 0.3, 0.2, 0.07, 0.03])
    predicted = np.where(rng.random(200) < 0.6, labels, rng.choice(classes[1:], size=200))
    m = ClassifierMetrics.from_predictions(classes, labels, predicted)
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0
    )
    table = m.precision_recall
    np.testing.assert_allclose(table["precision"], p)
    np.testing.assert_allclose(table["recall"], r)
    np.testing.assert_allclose(table["f1"], f)
    np.testing.assert_array_equal(table["support"], s)
    np.testing.assert_array_equal(
        m.confusion.to_numpy(), sklearn_metrics.confusion_matrix(labels, predicted, labels=classes)
    )
    assert m.accuracy == pytest.approx(sklearn_metrics.accuracy_score(labels, predicted))


def test_top_losses_ordering(metrics):
    top = metrics.top_losses(k=3)
    assert list(top.columns) == ["source", "label", "predicted", "probability_of_label", "loss"]
    # p(label) per example: .9 .6 .3 .7 .2 .8 0 -> worst are 6, 4, 2.
    assert list(top.index) == [6, 4, 2]
    assert top["source"].tolist() == ["img6.png", "img4.png", "img2.png"]
    assert top["loss"].tolist() == pytest.approx([-math.log(1e-12), -math.log(0.2), -math.log(0.3)])
    assert top["probability_of_label"].tolist() == pytest.approx([0.0, 0.2, 0.3])
    everything = metrics.top_losses(k=100)
    assert len(everything) == 7
    assert everything["loss"].is_monotonic_decreasing
    assert len(metrics.top_losses()) == 7  # default k=9, only 7 examples


def test_top_losses_without_sources_or_probabilities():
    m = ClassifierMetrics.from_predictions(CLASSES, LABELS, PREDICTED, PROBABILITIES)
    assert m.top_losses(2)["source"].isna().all()
    with pytest.raises(ValueError, match="probabilities"):
        ClassifierMetrics.from_predictions(CLASSES, LABELS, PREDICTED).top_losses()


def test_repr_is_short(metrics):
    assert repr(metrics) == "ClassifierMetrics(7 examples, 3 classes, accuracy=0.5714)"


def test_summary_mentions_accuracy_and_classes(metrics):
    text = metrics.summary()
    assert "57.1%" in text
    assert len(text.splitlines()) >= 1 + len(CLASSES)
    for name in CLASSES:
        assert name in text


def test_to_dict_json_round_trip(metrics):
    data = json.loads(json.dumps(metrics.to_dict()))
    assert data["accuracy"] == pytest.approx(4 / 7)
    assert data["classification_error"] == pytest.approx(3 / 7)
    assert data["examples"] == 7
    assert data["confusion"] == {
        "classes": list(CLASSES),
        "matrix": [[2, 1, 0], [1, 1, 0], [1, 0, 1]],
    }
    assert data["precision_recall"]["dog"] == {
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "support": 2,
    }
    assert list(data["precision_recall"]) == list(CLASSES)
    assert all(type(row["support"]) is int for row in data["precision_recall"].values())


def test_from_predictions_accepts_arrays_and_non_strings():
    m = ClassifierMetrics.from_predictions(range(3), np.array([0, 1, 2]), pd.Series([0, 2, 2]))
    assert m.classes == ("0", "1", "2")
    assert m.labels == ("0", "1", "2")
    assert m.accuracy == pytest.approx(2 / 3)


def test_metrics_are_immutable(metrics):
    with pytest.raises(AttributeError):
        metrics.labels = ("cat",)
    with pytest.raises(ValueError):
        metrics.probabilities[0, 0] = 0.5


@pytest.mark.parametrize(
    ("labels", "predicted", "message"),
    [
        (("cat", "horse"), ("cat", "dog"), "'horse'"),
        (("cat", "dog"), ("cat", "zebra"), "'zebra'"),
        (("cat", "dog", "dog"), ("cat", "dog"), "3 labels but 2"),
        ((), (), "0 examples"),
    ],
)
def test_validation_errors_name_the_value(labels, predicted, message):
    with pytest.raises(ValueError, match=message):
        ClassifierMetrics.from_predictions(CLASSES, labels, predicted)


def test_validation_of_probabilities_shape_and_sources():
    with pytest.raises(ValueError, match=r"\(7, 3\).*\(7, 2\)"):
        ClassifierMetrics.from_predictions(CLASSES, LABELS, PREDICTED, PROBABILITIES[:, :2])
    with pytest.raises(ValueError, match=r"\(7, 3\).*\(21,\)"):
        ClassifierMetrics.from_predictions(CLASSES, LABELS, PREDICTED, PROBABILITIES.ravel())
    with pytest.raises(ValueError, match="7 labels but 2 sources"):
        ClassifierMetrics.from_predictions(CLASSES, LABELS, PREDICTED, sources=["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        ClassifierMetrics.from_predictions(["cat", "cat"], ["cat"], ["cat"])
