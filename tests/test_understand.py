"""Issue 16's engine: checkpoint diff from cached predictions, confusion cells, data
problems (label errors, duplicates, outliers), decisions and Grad-CAM."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY
from safetensors.torch import save_file

import mlwidgets as mw
from mlwidgets.errors import SessionError
from mlwidgets.models import build_model, small_cnn
from mlwidgets.predictions import PREDICTIONS_DIR
from mlwidgets.saliency import FROZEN_NOTE, classifier_saliency


@pytest.fixture
def session(trained_copy):
    return mw.TrainingSession.restore(trained_copy)


def expected_predictions(session, which):
    classifier = mw.ImageClassifier.from_checkpoint(session.checkpoints[which])
    return classifier.probabilities([i.path for i in session.split[1]])


# -- compare --------------------------------------------------------------------------------


def test_a_checkpoint_compared_with_itself_is_an_empty_diff(session):
    d = session.compare(-1, "latest")
    assert d.is_empty and d.fixed == d.broken == d.changed == []
    assert d.unchanged_right + d.unchanged_wrong == len(session.split[1])
    assert (d.per_class.filter(like="_change") == 0).all().all()


def test_a_diff_lists_exactly_the_images_that_changed(session):
    a, b = expected_predictions(session, 0), expected_predictions(session, -1)
    items = session.split[1]
    truth = np.array([session.classes.index(i.label) for i in items])
    pa, pb = a.argmax(1), b.argmax(1)
    d = session.compare(0, -1)
    assert d.a == session.checkpoints[0].id and d.b == session.checkpoints[-1].id
    assert {c.path for c in d.fixed} == {items[i].path for i in
                                          np.flatnonzero((pa != truth) & (pb == truth))}
    assert {c.path for c in d.broken} == {items[i].path for i in
                                           np.flatnonzero((pa == truth) & (pb != truth))}
    assert {c.path for c in d.changed} == {
        items[i].path for i in np.flatnonzero((pa != truth) & (pb != truth) & (pa != pb))}
    assert d.accuracy_b == pytest.approx((pb == truth).mean())
    assert not d.is_empty or (pa == pb).all()
    f1 = d.per_class["f1_b"] - d.per_class["f1_a"]
    assert np.allclose(f1, d.per_class["f1_change"])
    for which, predicted in (("a", pa), ("b", pb)):  # the same figures as ClassifierMetrics
        metrics = mw.ClassifierMetrics.from_predictions(
            session.classes, [i.label for i in items], [session.classes[k] for k in predicted])
        for metric in ("precision", "recall", "f1"):
            np.testing.assert_allclose(d.per_class[f"{metric}_{which}"],
                                       metrics.precision_recall[metric])
    assert list(d.per_class["support"]) == list(metrics.precision_recall["support"])


def test_checkpoints_are_named_by_id_index_best_and_latest(session):
    ids = [c.id for c in session.checkpoints]
    assert session.compare(ids[0], 1).a == ids[0]
    assert session.compare(-3, "best").b == session.best_checkpoint().id
    with pytest.raises(IndexError):
        session.compare(0, len(ids))
    with pytest.raises(KeyError):
        session.compare(0, "no-such-checkpoint")


def test_predictions_are_computed_once_and_cached_in_the_session(session):
    first = session.predictions(-1)
    assert session.prediction_cache.last_source == "images"
    session.prediction_cache.flush()  # written by a background thread
    np.testing.assert_allclose(first, expected_predictions(session, -1), atol=1e-6)
    folder = session.directory / PREDICTIONS_DIR / session.checkpoints[-1].id
    assert sorted(p.name for p in folder.iterdir()) == ["predictions.json",
                                                       "probabilities.safetensors"]
    again = mw.TrainingSession.restore(session.directory)  # a new kernel, say
    np.testing.assert_array_equal(again.predictions(-1), first)
    assert again.prediction_cache.last_source == "cache"
    # the checkpoint folders are untouched
    for c in session.checkpoints:
        c.verify()


def test_a_damaged_or_stale_cache_is_recomputed_never_used(session):
    good = session.predictions(-1)
    session.prediction_cache.flush()
    folder = session.directory / PREDICTIONS_DIR / session.checkpoints[-1].id
    tensor = folder / "probabilities.safetensors"
    data = bytearray(tensor.read_bytes())
    data[-1] ^= 0xFF
    tensor.write_bytes(bytes(data))
    fresh = mw.TrainingSession.restore(session.directory)
    np.testing.assert_allclose(fresh.predictions(-1), good, atol=1e-6)
    assert fresh.prediction_cache.last_source == "images"
    fresh.prediction_cache.flush()
    record = folder / "predictions.json"
    text = record.read_text()  # rewritten by the recomputation: now change one of its bytes
    record.write_text(text.replace('"images"', '"imagez"', 1))
    fresh = mw.TrainingSession.restore(session.directory)
    np.testing.assert_allclose(fresh.predictions(-1), good, atol=1e-6)
    assert fresh.prediction_cache.last_source == "images"
    fresh.prediction_cache.flush()  # its background rewrite must land before the link replaces it
    record.unlink()
    os.symlink("/etc/passwd", record)  # a link is never followed: recomputed
    fresh = mw.TrainingSession.restore(session.directory)
    np.testing.assert_allclose(fresh.predictions(-1), good, atol=1e-6)


def test_a_predictions_folder_that_links_elsewhere_is_never_written(session, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, session.directory / PREDICTIONS_DIR)
    np.testing.assert_allclose(session.predictions(-1), expected_predictions(session, -1),
                               atol=1e-6)  # computed, kept in memory, not written
    session.prediction_cache.flush()
    assert list(elsewhere.iterdir()) == []
    session.remove_checkpoints([session.checkpoints[0].id])  # nothing followed out either
    assert list(elsewhere.iterdir()) == []


def test_removing_a_checkpoint_removes_its_cached_predictions(session):
    for which in range(len(session.checkpoints)):
        session.predictions(which)
    session.prediction_cache.flush()
    doomed = session.checkpoints[0].id
    session.remove_checkpoints([doomed])
    left = sorted(p.name for p in (session.directory / PREDICTIONS_DIR).iterdir())
    assert left == [c.id for c in session.checkpoints]
    # retention too: CheckpointStore.delete removes what was derived from it
    keep = session.checkpoints[-1].id
    session.store.apply_retention(keep_last=1)
    assert [p.name for p in (session.directory / PREDICTIONS_DIR).iterdir()] == [keep]


def test_orphaned_predictions_are_swept_when_the_cache_is_opened(session):
    session.predictions(-1)
    session.prediction_cache.flush()
    orphan = session.directory / PREDICTIONS_DIR / "000099-training"
    shutil.copytree(orphan.parent / session.checkpoints[-1].id, orphan)
    fresh = mw.TrainingSession.restore(session.directory)
    fresh.prediction_cache  # noqa: B018  (opening it sweeps)
    assert not orphan.exists()


def test_a_confusion_cell_holds_the_images_the_matrix_counts(session):
    probs = session.predictions(-1)
    items = session.split[1]
    for true in session.classes:
        for p, predicted in enumerate(session.classes):
            rows = session.confusion_cell(true, predicted, -1)
            expected = {items[i].path for i in range(len(items))
                        if items[i].label == true and probs[i].argmax() == p}
            assert {r["path"] for r in rows} == expected
            assert [r["probability"] for r in rows] == sorted(
                (r["probability"] for r in rows), reverse=True)
    with pytest.raises(KeyError):
        session.confusion_cell("dragon", session.classes[0])


# -- transfer learning: predictions from the cached features ---------------------------------


@pytest.fixture(scope="module")
def transferred(tiny_data, tmp_path_factory):
    torch.manual_seed(3)
    body, _ = small_cnn()
    weights = tmp_path_factory.mktemp("w") / "backbone.safetensors"
    save_file(body.state_dict(), str(weights))
    params = TINY.replace(weights_file=str(weights), max_iterations=2)
    session = mw.TrainingSession.create(tiny_data, params, tmp_path_factory.mktemp("t") / "s")
    job = session.start()
    assert job.wait(300) and job.state == "completed", job.error
    return session


def test_head_checkpoints_predict_from_the_cached_features(transferred):
    probs = transferred.predictions(-1)
    assert transferred.prediction_cache.last_source == "features"
    expected = mw.ImageClassifier.from_checkpoint(transferred.checkpoints[-1]).probabilities(
        [i.path for i in transferred.split[1]])
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert transferred.compare("latest", "latest").is_empty
    with pytest.raises(ValueError, match="holds no classifier"):
        transferred.compare(0, -1)  # the feature-extraction checkpoint


def test_saliency_of_a_head_checkpoint_says_the_backbone_is_frozen(transferred):
    s = transferred.saliency(transferred.split[1][0].path, -1)
    assert s.note == FROZEN_NOTE
    assert s.heatmap is None and "2x2" in s.reason  # small_cnn at 32 px: a 2x2 last map


# -- saliency ---------------------------------------------------------------------------------


def test_grad_cam_draws_a_map_only_where_it_means_something(tiny_data):
    classes = tiny_data.classes
    for size, meaningful in ((32, False), (64, True)):
        model = build_model(TINY.replace(image_size=size), len(classes))
        classifier = mw.ImageClassifier.from_model(model, classes, size)
        s = classifier_saliency(classifier, tiny_data.items[0].path)
        assert s.is_meaningful is meaningful, s
        assert s.map_size == (size // 16, size // 16)
        if meaningful:
            assert s.heatmap.shape == (size, size)
            assert 0 <= s.heatmap.min() and s.heatmap.max() == pytest.approx(1)
            assert s.overlay().shape == (size, size, 3)
            assert s.overlay_png().startswith(b"\x89PNG")
        else:
            assert "too coarse" in s.reason
        assert s.note == ""  # a from-scratch network: every layer trains


# -- data problems --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Shapes with 4 flipped labels, a cat photo among the circles and one exact copy."""
    from PIL import Image
    from skimage import data as photos

    root = tmp_path_factory.mktemp("planted")
    source = mw.datasets.shapes(root / "shapes", images_per_class=20, image_size=64,
                                classes=("circle", "square", "triangle", "star"))
    Image.fromarray(photos.chelsea()).resize((64, 64)).save(root / "cat.png")
    shutil.copy(source.items[5].path, root / "copy.png")
    near = Image.open(source.items[30].path).convert("RGB").resize((60, 60))
    near.save(root / "near.jpg", quality=85)  # resized and recompressed: not the same bytes
    files: dict[str, list] = {c: [] for c in source.classes}
    flipped = {source.items[i].path for i in (3, 24, 45, 66)}
    for item in source.items:
        label = item.label
        if item.path in flipped:
            label = source.classes[(source.classes.index(label) + 1) % 4]
        files[label].append(item.path)
    files["circle"].append(root / "cat.png")
    files[source.items[5].label].append(root / "copy.png")
    files[source.items[30].label].append(root / "near.jpg")
    data = mw.DataSource.files_by_label(files)
    return data, flipped, root, source.items[5].path, source.items[30].path


def test_planted_problems_are_found(planted):
    data, flipped, root, original, near_original = planted
    report = data.find_data_problems(image_size=64)
    top = {report.paths[i] for i in report.ranking[:2 * len(flipped)]}
    assert flipped <= top, report.label_issues  # every planted flip in the top 2x
    assert flipped <= {issue.path for issue in report.label_issues}
    exact = [d for d in report.duplicates if d.exact]
    assert [{d.a, d.b} for d in exact] == [{original, root / "copy.png"}]
    near = [d for d in report.duplicates if not d.exact]
    assert {near_original, root / "near.jpg"} in [{d.a, d.b} for d in near], near
    assert root / "cat.png" in [o.path for o in report.outliers[:5]]
    assert "possible label errors" in report.summary()


# -- decisions ----------------------------------------------------------------------------------


def test_decisions_survive_a_restart_and_clean_the_data(session):
    train, valid = session.split
    gone, moved = train[0].path, valid[0].path
    other = next(c for c in session.classes if c != valid[0].label)
    session.decisions.decide(gone, "exclude")
    session.decisions.decide(moved, "relabel", other)
    session.decisions.decide(train[1].path, "keep")
    reopened = mw.TrainingSession.restore(session.directory)
    assert reopened.decisions.get(moved)["label"] == other
    assert len(reopened.decisions) == 3
    cleaned = reopened.cleaned_data()
    labels = {i.path: i.label for i in cleaned.items}
    assert gone not in labels and labels[moved] == other
    assert len(cleaned) == len(train) + len(valid) - 1
    reopened.decisions.forget(gone)
    assert len(reopened.cleaned_data()) == len(train) + len(valid)


def test_with_decisions_takes_a_plain_mapping(tiny_data):
    first, second = tiny_data.items[0].path, tiny_data.items[1].path
    cleaned = tiny_data.with_decisions({str(first): {"action": "exclude"},
                                        second: {"action": "relabel", "label": "square"}})
    labels = {i.path: i.label for i in cleaned.items}
    assert first not in labels and labels[second] == "square"


def test_decisions_are_validated_and_confined(session, tmp_path):
    with pytest.raises(ValueError, match="relabel needs a label"):
        session.decisions.decide("x.png", "relabel")
    with pytest.raises(ValueError, match="unknown decision"):
        session.decisions.decide("x.png", "burn")
    session.decisions.decide("x.png", "exclude")
    path = session.directory / "decisions.json"
    record = json.loads(path.read_text())
    record["decisions"]["x.png"]["action"] = "keep"  # changed by hand: the digest says so
    path.write_text(json.dumps(record))
    with pytest.raises(SessionError, match="decisions.json"):
        session.decisions.all()
    path.unlink()
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{}")
    os.symlink(outside, path)
    with pytest.raises(SessionError, match="symlink"):
        session.decisions.all()
    with pytest.raises(Exception, match="symlink"):
        session.decisions.decide("y.png", "exclude")
    assert outside.read_text() == "{}"


def test_a_session_finds_problems_in_its_own_images(transferred):
    report = transferred.find_data_problems()
    n = sum(len(part) for part in transferred.split)
    assert sorted(report.ranking) == list(range(n))
    assert {d.across_split for d in report.duplicates} <= {True, False}
    assert len(report.outliers) == 10


@pytest.mark.parametrize("backbone", [{"architecture": "resnet18", "pretrained": False},
                                      {"architecture": "mobilenet_v3_small", "pretrained": False},
                                      {"feature_extractor": "efficientnet_lite0"}],
                         ids=lambda b: next(iter(b.values())))
def test_grad_cam_reads_the_last_block_of_every_backbone(backbone):
    """resnets, mobilenets and the built-in extractor: 3x3 maps at 96 px, 2x2 at 64 px."""
    from PIL import Image

    params = mw.ModelParameters(image_size=96, **backbone)
    model = build_model(params, 3, with_weights=False)
    classifier = mw.ImageClassifier.from_model(model, ["a", "b", "c"], 96)
    picture = Image.fromarray((np.random.default_rng(0).random((96, 96, 3)) * 255)
                              .astype(np.uint8))
    s = classifier_saliency(classifier, picture, target="b")
    assert s.target == "b" and s.map_size == (3, 3)
    assert s.is_meaningful or "no part of the image" in s.reason
    if s.is_meaningful:
        assert s.heatmap.shape == (96, 96)
    small = build_model(params.replace(image_size=64), 3, with_weights=False)
    tiny = classifier_saliency(mw.ImageClassifier.from_model(small, ["a", "b", "c"], 64),
                               picture)
    assert tiny.map_size == (2, 2) and not tiny.is_meaningful


def test_a_scan_extracts_features_once_under_a_key_training_never_takes(session):
    from mlwidgets import features
    from mlwidgets.scan import session_features

    first, how = session_features(session, image_size=32)
    assert not how.endswith("(cached)")
    again, how = session_features(mw.TrainingSession.restore(session.directory), image_size=32)
    assert how.endswith("(cached)")
    np.testing.assert_array_equal(first, again)
    (folder,) = (session.directory / features.FEATURES_DIR).iterdir()
    assert json.loads((folder / "features.json").read_text())["key"]["purpose"] == \
        "data problems"
    report = session.find_data_problems(image_size=32)
    assert len(report.paths) == len(first)
