"""PredictionPanel driven headless: uploads, example images, and no classifier yet."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from PIL import Image

import mlwidgets as mw
from mlwidgets.ui.predict import PredictionPanel


@pytest.fixture(scope="module")
def classifier(trained_dir: Path) -> mw.ImageClassifier:
    session = mw.TrainingSession.restore(trained_dir)
    return mw.ImageClassifier.from_checkpoint(session.checkpoint("best"))


@pytest.fixture(scope="module")
def image_paths(tiny_data: mw.DataSource) -> list[Path]:
    return [item.path for item in tiny_data.items]


def uploaded(name: str, content: bytes) -> dict:
    """One file as ipywidgets 8's FileUpload.value holds it after a browser upload."""
    return {"name": name, "type": "image/png", "size": len(content),
            "content": memoryview(content), "last_modified": dt.datetime.now(dt.timezone.utc)}


def card_texts(panel: PredictionPanel) -> list[str]:
    """The visible text of each result card (a prediction's label column, or an error)."""
    return [card.children[1].value if hasattr(card, "children") else card.value
            for card in panel.results.children]


def test_predicting_paths_shows_a_card_per_image(classifier: mw.ImageClassifier,
                                                 image_paths: list[Path]) -> None:
    panel = PredictionPanel(classifier, top_classes=2)
    paths = image_paths[::16]  # one of each class

    predictions = panel.predict(paths)

    assert predictions == classifier.predictions(paths)
    texts = card_texts(panel)
    assert len(texts) == len(paths)
    for path, prediction, text in zip(paths, predictions, texts):
        assert path.name in text and f"<b>{prediction.label}</b>" in text
        assert text.count("%</span>") == 2  # bars for the two most probable classes
        assert f"{prediction.confidence:.1%}" in text
    assert "Predicted 3 images." in panel.status.value


def test_pil_images_and_bytes_predict_like_their_files(classifier: mw.ImageClassifier,
                                                       image_paths: list[Path]) -> None:
    path = image_paths[0]
    panel = PredictionPanel(classifier)

    from_pil, from_bytes = panel.predict([Image.open(path), path.read_bytes()])

    expected = classifier.predict(path)
    for prediction in (from_pil, from_bytes):
        assert prediction.label == expected.label
        assert prediction.probabilities == pytest.approx(expected.probabilities, abs=1e-6)


def test_an_upload_is_predicted_and_a_corrupt_file_is_named(classifier: mw.ImageClassifier,
                                                            image_paths: list[Path]) -> None:
    panel = PredictionPanel(classifier)
    good = image_paths[:2]

    panel.upload.value = (uploaded(good[0].name, good[0].read_bytes()),
                          uploaded("holiday.png", b"\x89PNG not really"),
                          uploaded(good[1].name, good[1].read_bytes()))

    assert "holiday.png" in panel.status.value  # reported by name …
    first, broken, second = panel.predictions
    assert broken is None  # … and the other images still predicted
    assert [first, second] == classifier.predictions(good)
    texts = card_texts(panel)
    assert good[0].name in texts[0] and "holiday.png" in texts[1] and good[1].name in texts[2]


def test_predict_uploaded_without_uploads_explains(classifier: mw.ImageClassifier) -> None:
    panel = PredictionPanel(classifier)
    with pytest.raises(ValueError, match="Upload images first"):
        panel.predict_uploaded()
    assert "Upload images first" in panel.status.value


def test_clicking_predict_without_a_classifier_asks_for_a_checkpoint(
        image_paths: list[Path]) -> None:
    panel = PredictionPanel(examples=image_paths)

    panel.examples_button.click()  # must not raise out of the click

    assert "Restore a checkpoint first" in panel.status.value
    assert panel.results.children == ()
    with pytest.raises(ValueError, match="Restore a checkpoint first"):
        panel.predict(image_paths[:1])


def test_examples_button_shows_other_images_on_each_click(classifier: mw.ImageClassifier,
                                                          image_paths: list[Path]) -> None:
    examples = image_paths[:8]
    panel = PredictionPanel(classifier, examples=examples)
    assert panel.examples_button.description == "Predict 6 validation images"

    panel.examples_button.click()
    first = card_texts(panel)
    panel.examples_button.click()
    second = card_texts(panel)

    assert len(first) == len(second) == 6
    assert all(p.name in text for p, text in zip(examples[:6], first))
    assert all(p.name in text for p, text in zip(examples[6:] + examples[:4], second))


def test_a_new_classifier_predicts_the_shown_images_again(classifier: mw.ImageClassifier,
                                                          image_paths: list[Path]) -> None:
    panel = PredictionPanel(examples=image_paths)
    assert PredictionPanel(examples=[]).examples_button.layout.display == "none"

    panel.set_classifier(classifier)
    panel.predict_examples(n=2)
    panel.set_classifier(classifier)  # e.g. another checkpoint restored
    assert len(panel.predictions) == 2 and "Predicted 2 images." in panel.status.value

    panel.set_classifier(None)
    assert panel.results.children == () and "Restore a checkpoint first" in panel.status.value
