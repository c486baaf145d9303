"""Classifiers restored from checkpoints predict exactly what the trained model predicted."""

import copy
import json

import numpy as np
import pytest
from conftest import TINY, run_python
from PIL import Image

import mlwidgets as mw
from mlwidgets.checkpoints import CheckpointError


@pytest.fixture(scope="module")
def live_probabilities(tiny_data, tmp_path_factory):
    """Train, and at each iteration's end record what the live model predicts right then
    (the report comes from the training thread just before the checkpoint's snapshot)."""
    session = mw.TrainingSession.create(tiny_data, TINY, tmp_path_factory.mktemp("c") / "s")
    images = [item.path for item in tiny_data.items[:12]]
    recorded = {}

    def on_report(event):
        if event["type"] == "report":
            live = mw.ImageClassifier.from_model(copy.deepcopy(session.job.model), session.classes,
                                                  32)
            recorded[event["iteration"]] = live.probabilities(images)

    session.on_event(on_report)
    job = session.start()
    assert job.wait(300) and job.state == "completed", job.error
    return session, images, recorded


def test_every_checkpoint_restores_to_the_same_probabilities(live_probabilities):
    session, images, recorded = live_probabilities
    assert len(recorded) == 3
    for checkpoint in session.checkpoints:
        restored = mw.ImageClassifier.from_checkpoint(checkpoint).probabilities(images)
        assert np.abs(restored - recorded[checkpoint.iteration]).max() <= 1e-6


def test_a_new_process_restores_the_same_probabilities(live_probabilities):
    session, images, recorded = live_probabilities
    checkpoint = session.checkpoints[1]
    result = run_python("""
        import json, sys
        import mlwidgets as mw
        clf = mw.ImageClassifier.from_checkpoint(sys.argv[1])
        print(json.dumps(clf.probabilities(sys.argv[2:]).tolist()))
    """, str(checkpoint.path), *map(str, images))
    assert result.returncode == 0, result.stderr
    restored = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    assert np.abs(restored - recorded[checkpoint.iteration]).max() <= 1e-6


def test_predict_paths_and_pil_images_alike(trained_dir, tiny_data):
    clf = mw.TrainingSession.restore(trained_dir).checkpoint("latest")
    clf = mw.ImageClassifier.from_checkpoint(clf)
    path = tiny_data.items[0].path
    by_path, by_image = clf.predict(path), clf.predict(Image.open(path))
    assert by_path.label == by_image.label in clf.classes
    assert set(by_path.probabilities) == set(clf.classes)
    assert sum(by_path.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert by_path.probabilities == pytest.approx(by_image.probabilities, abs=1e-6)
    batch = clf.predictions([item.path for item in tiny_data.items[:5]])
    assert [p.label for p in batch][0] == by_path.label and len(batch) == 5


def test_evaluation_reports_accuracy_and_confusion(trained_dir, tiny_data):
    clf = mw.ImageClassifier.from_checkpoint(
        mw.TrainingSession.restore(trained_dir).checkpoint("best"))
    metrics = clf.evaluation(tiny_data)
    assert 0 <= metrics.accuracy <= 1
    assert metrics.confusion.to_numpy().sum() == len(tiny_data)
    assert list(metrics.precision_recall.index) == clf.classes
    assert metrics.classification_error == pytest.approx(1 - metrics.accuracy)


def test_a_checkpoint_without_a_classifier_is_refused(tmp_path):
    store = mw.CheckpointStore(tmp_path / "checkpoints", "s")
    store.open_for_writing()
    c = store.commit(phase="extracting_features", iteration=0, step_number=0, metrics={},
                     model_state=None)
    with pytest.raises(CheckpointError, match="no trained classifier"):
        mw.ImageClassifier.from_checkpoint(c)


def test_a_missing_image_is_named(trained_dir, tmp_path):
    clf = mw.ImageClassifier.from_checkpoint(
        mw.TrainingSession.restore(trained_dir).checkpoint("latest"))
    with pytest.raises(FileNotFoundError, match="ghost.png"):
        clf.predict(tmp_path / "ghost.png")
