"""EvaluationPanel driven headless: the Evaluate button, what it shows, and its refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

import mlwidgets as mw
from mlwidgets.ui.evaluation import EvaluationPanel


@pytest.fixture(scope="module")
def session(trained_dir: Path) -> mw.TrainingSession:
    return mw.TrainingSession.restore(trained_dir)


@pytest.fixture(scope="module")
def classifier(session: mw.TrainingSession) -> mw.ImageClassifier:
    return mw.ImageClassifier.from_checkpoint(session.checkpoint("best"))


@pytest.fixture(scope="module")
def validation(session: mw.TrainingSession) -> mw.DataSource:
    """The session's validation images as a DataSource, as the Studio passes them."""
    by_label: dict[str, list[Path]] = {}
    for item in session.split[1]:
        by_label.setdefault(item.label, []).append(item.path)
    return mw.DataSource.files_by_label(by_label)


def test_evaluate_button_shows_the_evaluation(classifier: mw.ImageClassifier,
                                              validation: mw.DataSource) -> None:
    panel = EvaluationPanel(classifier, validation)
    assert panel.results.layout.display == "none"  # nothing to show before evaluating

    panel.evaluate_button.click()

    expected = classifier.evaluation(validation)
    assert panel.metrics is not None and panel.results.layout.display == ""
    pd.testing.assert_frame_equal(panel.metrics.precision_recall, expected.precision_recall)
    shown = [re.findall(r"<td[^>]*>(.*?)</td>", row)
             for row in re.findall(r"<tr>(.*?)</tr>", panel.table.value)][1:]  # 0: header
    assert shown == [[name, f"{r.precision:.3f}", f"{r.recall:.3f}", f"{r.f1:.3f}",
                      str(int(r.support))] for name, r in expected.precision_recall.iterrows()]
    assert f"{expected.accuracy:.1%}" in panel.accuracy.value
    heatmap = panel.confusion_chart.data[0]
    assert [list(r) for r in heatmap.z] == expected.confusion.values.tolist()
    assert list(heatmap.x) == classifier.classes
    assert f"Evaluated {len(validation)} images." in panel.status.value


def test_top_loss_cards_name_their_images(classifier: mw.ImageClassifier,
                                          validation: mw.DataSource) -> None:
    panel = EvaluationPanel(classifier, validation, top_losses=4)
    metrics = panel.evaluate()

    worst = metrics.top_losses(4)
    captions = [card.children[1].value for card in panel.top_loss_cards.children]
    assert len(captions) == 4
    for row, caption in zip(worst.itertuples(), captions):
        assert Path(row.source).name in caption
        # Right or wrong, said first, then the probability of the true class.
        mark = (f"✓ right: {row.label}" if row.predicted == row.label
                else f"✗ wrong: said {row.predicted}, is {row.label}")
        assert mark in caption and f"p({row.label}) = {row.probability_of_label:.2f}" in caption
    assert "checkpoint" in panel.using.value or classifier.checkpoint is None


def test_status_says_what_is_being_evaluated(classifier: mw.ImageClassifier,
                                             validation: mw.DataSource,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    panel = EvaluationPanel(classifier, validation)
    seen_while_evaluating = []
    real = classifier.evaluation

    def evaluation(data: mw.DataSource) -> mw.ClassifierMetrics:
        seen_while_evaluating.append((panel.status.value, panel.evaluate_button.disabled))
        return real(data)

    monkeypatch.setattr(classifier, "evaluation", evaluation)
    panel.evaluate()

    [(status, disabled)] = seen_while_evaluating
    assert f"Evaluating {len(validation)} images…" in status and disabled
    assert not panel.evaluate_button.disabled


def test_clicking_evaluate_without_a_classifier_asks_for_a_checkpoint(
        validation: mw.DataSource) -> None:
    panel = EvaluationPanel(data=validation)

    panel.evaluate_button.click()  # must not raise out of the click

    assert "Restore a checkpoint first" in panel.status.value and panel.metrics is None
    with pytest.raises(ValueError, match="Restore a checkpoint first"):
        panel.evaluate()


def test_evaluating_without_data_explains(classifier: mw.ImageClassifier) -> None:
    panel = EvaluationPanel(classifier)
    with pytest.raises(ValueError, match="No images to evaluate on"):
        panel.evaluate()


def test_new_data_or_classifier_clears_a_stale_evaluation(classifier: mw.ImageClassifier,
                                                          validation: mw.DataSource,
                                                          tiny_data: mw.DataSource) -> None:
    panel = EvaluationPanel(classifier, validation)
    panel.evaluate()

    panel.set_data(tiny_data)
    assert panel.metrics is None and panel.results.layout.display == "none"
    assert f"{len(tiny_data)} images" in panel.status.value

    assert len(panel.evaluate().labels) == len(tiny_data)
    panel.set_classifier(None)
    assert panel.metrics is None and "Restore a checkpoint first" in panel.status.value
