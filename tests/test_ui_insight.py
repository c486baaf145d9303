"""Issue 16's panels driven headless: compare in the timeline, confusion drill-down in the
Checkpoints and Evaluate tabs, Grad-CAM in the Preview tab, and the Data tab's possible
problems with decisions that outlive the panel."""

from __future__ import annotations

import numpy as np
import pytest
from plotly.callbacks import Points

import mlwidgets as mw
from mlwidgets.ui.evaluation import EvaluationPanel
from mlwidgets.ui.predict import PredictionPanel
from mlwidgets.ui.problems import DataProblemsPanel
from mlwidgets.ui.timeline import CheckpointTimeline


@pytest.fixture
def session(trained_copy):
    return mw.TrainingSession.restore(trained_copy)


def click_cell(figure, true: str, predicted: str) -> None:
    """What a click on a heat map cell in the browser sends to the kernel."""
    trace = figure.data[0]
    row, col = list(trace.y).index(true), list(trace.x).index(predicted)
    trace._dispatch_on_click(Points(point_inds=[[row, col]], xs=[predicted], ys=[true],
                                    trace_name=None, trace_index=0), None)


def test_compare_with_shows_the_diff_and_the_fixed_and_broken_images(session):
    timeline = CheckpointTimeline(session)
    timeline.select(-1)
    insight = timeline.insight
    assert [v for _, v in insight.other.options] == [c.id for c in session.checkpoints]
    diff = timeline.compare_with(0)
    expected = session.compare(0, -1)
    assert diff.counts == expected.counts
    assert len(insight.fixed.children) == len(expected.fixed)
    assert len(insight.broken.children) == len(expected.broken)
    assert "fixed" in insight.summary.value and "precision" in insight.summary.value
    insight.other.value = session.checkpoints[-1].id
    insight.compare_button.click()
    assert insight.diff.is_empty and insight.changes.layout.display == "none"
    timeline.select(0)  # another checkpoint: the old diff no longer applies
    assert insight.diff is None and insight.summary.value == ""


def test_clicking_a_confusion_cell_shows_its_images(session):
    timeline = CheckpointTimeline(session)
    timeline.select(-1)
    true = predicted = session.classes[0]
    click_cell(timeline.heatmap, true, predicted)
    rows = timeline.insight.cell.rows
    assert rows == session.confusion_cell(true, predicted, -1)
    assert len(timeline.insight.cell.grid.children) == len(rows)
    assert f"true {true}, predicted {predicted}" in timeline.insight.cell.title.value
    assert timeline.show_cell(session.classes[1], session.classes[0]) == \
        session.confusion_cell(session.classes[1], session.classes[0], -1)


def test_saliency_follows_the_slider_and_says_when_it_means_nothing(session):
    timeline = CheckpointTimeline(session)
    image = session.split[1][0].path
    found = timeline.insight.show_saliency(image)
    assert not found.is_meaningful  # small_cnn at 32 px: a 2x2 last map
    assert "too coarse" in timeline.insight.saliency.text.value
    timeline.select(0)
    assert session.checkpoints[0].id in timeline.insight.saliency.text.value


def test_the_evaluate_tab_drills_into_a_cell(session):
    classifier = mw.ImageClassifier.from_checkpoint(session.checkpoint("latest"))
    valid = mw.DataSource(session.split[1], check=False)
    panel = EvaluationPanel(classifier, valid)
    with pytest.raises(ValueError, match="Evaluate first"):
        panel.show_cell("circle", "circle")
    metrics = panel.evaluate()
    true, predicted = session.classes[0], session.classes[0]
    click_cell(panel.confusion_chart, true, predicted)
    rows = panel.cell_images.rows
    assert len(rows) == int(metrics.confusion.loc[true, predicted])
    assert all(r["label"] == true for r in rows)
    probs = session.predictions("latest")
    np.testing.assert_allclose(sorted(r["probability"] for r in rows), sorted(
        probs[i, session.classes.index(predicted)] for i, item in enumerate(session.split[1])
        if item.label == true and probs[i].argmax() == session.classes.index(predicted)),
        atol=1e-5)


def test_the_preview_tab_shows_where_the_classifier_looks(session):
    classifier = mw.ImageClassifier.from_checkpoint(session.checkpoint("latest"))
    panel = PredictionPanel(classifier, [i.path for i in session.split[1]])
    panel.predict_examples(2)
    assert len(panel.saliency.picker.options) == 2
    found = panel.saliency.show(1)
    assert found.map_size == (2, 2) and "No heat map" in panel.saliency.view.text.value


def test_problems_panel_lists_and_remembers_decisions(session, tmp_path):
    panel = DataProblemsPanel(session)
    report = panel.scan(image_size=32)
    assert "possible label errors" in panel.status.value
    panel.show("outliers")
    assert len(panel.grid.children) == len(report.outliers)
    target = report.outliers[0].path
    other = next(c for c in session.classes if c != report.outliers[0].label)
    panel.decide(target, "relabel", other)
    panel.show("label_issues")  # switching kinds keeps decisions: they are in the session
    panel.show("outliers")
    assert f"relabelled {other}" in panel.grid.children[0].children[2].value
    # a new panel on a restored session (a kernel restart) sees the decision
    again = DataProblemsPanel(mw.TrainingSession.restore(session.directory))
    assert "1 relabel" in again.decided.value
    new = again.start_clean_session(tmp_path / "clean")
    assert {i.path: i.label for part in new.split for i in part}[target] == other


def test_a_card_button_records_its_decision(session):
    panel = DataProblemsPanel(session)
    report = panel.scan(image_size=32)
    panel.show("outliers")
    card = panel.grid.children[0]
    keep, exclude = card.children[3].children
    exclude.click()
    assert session.decisions.get(report.outliers[0].path)["action"] == "exclude"
    panel.grid.children[0].children[4].value = session.classes[-1] if (
        report.outliers[0].label != session.classes[-1]) else session.classes[0]
    assert session.decisions.get(report.outliers[0].path)["action"] == "relabel"


def test_a_dragged_slider_redraws_the_pinned_map_once_it_rests(session, monkeypatch):
    """In a kernel a burst of slider moves runs one saliency map, on the kernel's event
    loop, for the checkpoint the slider stopped at; outside one every move draws at once
    (above). The kernel is played by a fresh thread's event loop."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from mlwidgets.ui import common

    monkeypatch.setattr(common, "kernel_event_loop", asyncio.get_running_loop)

    timeline = CheckpointTimeline(session)
    image = session.split[1][0].path
    timeline.insight.show_saliency(image)  # pinned
    drawn: list[str] = []
    real = timeline.insight.saliency.show

    async def drag() -> None:
        done = asyncio.Event()

        def show(found, title=""):
            real(found, title)
            drawn.append(title)
            done.set()

        timeline.insight.saliency.show = show
        for index in [0, 1, 2, 0, 1]:  # no await in between: one burst
            timeline.select(index)
        await asyncio.wait_for(done.wait(), timeout=120)

    with ThreadPoolExecutor(1) as kernel:  # its failure is raised here by result()
        kernel.submit(asyncio.run, drag()).result()
    assert drawn == [f"{image.name} at {session.checkpoints[1].id}"]
    assert session.checkpoints[1].id in timeline.insight.saliency.text.value
