"""PredictionPanel: drop images in (or pick validation images) and see what a restored
classifier predicts for each, with bars for the most probable classes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from PIL import Image

from ..classifier import ImageClassifier, Prediction
from ..images import open_image, thumbnail_png
from .common import (
    THUMBNAIL_SIZE,
    button,
    card_grid,
    clicked,
    escape,
    message,
    reports_errors,
    using_checkpoint,
)
from .saliency import ClassifierSaliency

NO_CLASSIFIER = "Restore a checkpoint first: predictions need a trained classifier."
CARD_WIDTH = 360


class PredictionPanel(widgets.VBox):
    """Predictions for uploaded images or validation examples, one card per image.

    `examples` are image paths (e.g. the session's validation images); when given, a button
    predicts a few of them at a time, different ones on each click.
    """

    def __init__(self, classifier: ImageClassifier | None = None,
                 examples: Sequence[str | os.PathLike] | None = None, top_classes: int = 3,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.classifier = classifier
        self.top_classes = top_classes
        self.predictions: list[Prediction | None] = []
        self._shown: tuple[list[Any], list[str]] = ([], [])  # re-predicted on a new classifier
        self._next_example = 0
        self.status = widgets.HTML()
        self.upload = widgets.FileUpload(accept="image/*", multiple=True,
                                         description="Upload images")
        self.upload.observe(self._uploaded, "value")
        self.examples_button = button("Predict validation images", self.predict_examples,
                                      icon="images")
        self.examples_button.layout.width = "auto"  # the fixed default cuts its label off
        self.results = card_grid(CARD_WIDTH)
        # Grad-CAM of the classifier on the images shown (see ui/insight.py).
        self.saliency = ClassifierSaliency(lambda: self.classifier, lambda: self._shown)
        self.using = widgets.HTML()  # which checkpoint, in words
        self.children = [self.using, widgets.HBox([self.upload, self.examples_button]),
                         self.status,
                         self.results, self.saliency]
        self.set_examples(examples or [])
        self.set_classifier(classifier)

    # -- public actions ---------------------------------------------------------------

    def set_classifier(self, classifier: ImageClassifier | None, best: bool = False) -> None:
        """Predict with `classifier` from now on (`best`: its checkpoint is the session's
        best); images already shown are predicted again."""
        self.classifier = classifier
        self.using.value = using_checkpoint(classifier, best)  # which checkpoint, in words
        if classifier is None:
            self.results.children, self.predictions = [], []
            self.status.value = message(NO_CLASSIFIER)
        elif self._shown[0]:
            self.predict(*self._shown)
        else:
            self.status.value = message("Upload images, or predict validation images, to see "
                                        "what the classifier says.")

    def set_examples(self, examples: Sequence[str | os.PathLike]) -> None:
        """The images `predict_examples` draws from (paths); none hides its button."""
        self.examples = [Path(p) for p in examples]
        self._next_example = 0
        n = min(6, len(self.examples))
        self.examples_button.description = f"Predict {n} validation images"
        self.examples_button.layout.display = "" if self.examples else "none"

    @reports_errors()
    def predict(self, images: Sequence[Any],
                names: Sequence[str] | None = None) -> list[Prediction | None]:
        """Predict each image (a path, PIL image or encoded bytes) and show the results.

        Returns one Prediction per image, None where the image could not be read; those are
        shown as errors naming them while the others are still predicted.
        """
        if self.classifier is None:
            raise ValueError(NO_CLASSIFIER)
        images = list(images)
        if not images:
            raise ValueError("No images to predict.")
        names = list(names) if names is not None else [_name_of(im, k) for k, im in
                                                       enumerate(images)]
        decoded: list[Image.Image | None] = []
        problems: list[str] = []
        for name, image in zip(names, images):
            try:
                decoded.append(open_image(image))
            except Exception as e:  # one bad file must not stop the others
                decoded.append(None)
                problems.append(f"{name}: {e}")
        readable = [image for image in decoded if image is not None]
        self.status.value = message(f"Predicting {len(readable)} images…")
        found = iter(self.classifier.predictions(readable) if readable else [])
        self.predictions = [next(found) if image is not None else None for image in decoded]
        self._shown = (images, names)
        self.saliency.images_changed()
        self.results.children = [
            _prediction_card(name, image, p, self.top_classes) if p is not None
            else _error_card(name, problem)
            for name, image, p, problem in zip(names, decoded, self.predictions,
                                               _problems_by_position(decoded, problems))
        ]
        if problems:
            self.status.value = message("Could not read " + "; ".join(problems), "error")
        else:
            self.status.value = message(f"Predicted {len(readable)} images.", "success")
        return self.predictions

    @reports_errors()
    def predict_uploaded(self) -> list[Prediction | None]:
        """Predict the images in the upload widget."""
        if not self.upload.value:
            raise ValueError("Upload images first (the Upload images button).")
        files = list(self.upload.value)
        return self.predict([bytes(f["content"]) for f in files], [f["name"] for f in files])

    @reports_errors()
    def predict_examples(self, n: int = 6) -> list[Prediction | None]:
        """Predict the next `n` example images (the next click shows the ones after them)."""
        if not self.examples:
            raise ValueError("No validation images to predict; upload images instead.")
        n = min(n, len(self.examples))
        start = self._next_example
        chosen = [self.examples[(start + k) % len(self.examples)] for k in range(n)]
        predictions = self.predict(chosen)
        self._next_example = (start + n) % len(self.examples)
        return predictions

    # -- helpers ------------------------------------------------------------------------

    def _uploaded(self, change: Any) -> None:
        if change["new"]:  # () when the upload is cleared
            clicked(self.predict_uploaded)(change)


def _name_of(image: Any, position: int) -> str:
    if isinstance(image, (str, os.PathLike)):
        return Path(image).name
    return Path(getattr(image, "filename", "") or f"image {position + 1}").name


def _problems_by_position(decoded: list[Image.Image | None], problems: list[str]) -> list[str]:
    failures = iter(problems)
    return [next(failures) if image is None else "" for image in decoded]


def _prediction_card(name: str, image: Image.Image, prediction: Prediction,
                     top: int) -> widgets.HBox:
    picture = widgets.Image(value=thumbnail_png(image, THUMBNAIL_SIZE), format="png",
                            layout=widgets.Layout(width=f"{THUMBNAIL_SIZE}px",
                                                  height=f"{THUMBNAIL_SIZE}px",
                                                  object_fit="contain", flex="0 0 auto"))
    text = widgets.HTML(
        f"<div style='font-size:12px; overflow-wrap:anywhere'>{escape(name)}</div>"
        f"<div style='font-size:15px; margin:2px 0 4px'><b>{escape(prediction.label)}</b></div>"
        + probability_bars(prediction.probabilities, top),
        layout=widgets.Layout(width=f"{CARD_WIDTH - THUMBNAIL_SIZE - 16}px"))
    return widgets.HBox([picture, text], layout=widgets.Layout(width=f"{CARD_WIDTH}px"))


def _error_card(name: str, problem: str) -> widgets.HTML:
    return widgets.HTML(message(problem or name, "error"),
                        layout=widgets.Layout(width=f"{CARD_WIDTH}px"))


def probability_bars(probabilities: dict[str, float], top: int = 3) -> str:
    """HTML bars for the `top` most probable classes, coloured by the notebook theme."""
    best = sorted(probabilities.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return "".join(
        "<div style='display:flex; align-items:center; gap:6px; font-size:12px'>"
        f"<span title='{escape(label)}' style='width:80px; overflow:hidden;"
        f" text-overflow:ellipsis; white-space:nowrap'>{escape(label)}</span>"
        "<span style='flex:1; height:8px; border-radius:4px;"
        " background:var(--jp-layout-color3, #e0e0e0)'>"
        f"<span style='display:block; width:{p:.1%}; height:100%; border-radius:4px;"
        " background:var(--jp-brand-color1, #1976d2)'></span></span>"
        f"<span style='width:48px; text-align:right'>{p:.1%}</span></div>"
        for label, p in best)
