"""EvaluationPanel: how a restored classifier does on labelled images — accuracy, per-class
precision and recall, the confusion matrix, and the images it gets most wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ipywidgets as widgets

from ..classifier import ImageClassifier
from ..data import DataSource
from ..metrics import ClassifierMetrics
from .common import (
    button,
    card_grid,
    confusion_heatmap,
    figure,
    message,
    reports_errors,
    table,
    thumbnail_card,
    thumbnail_or_reason,
    using_checkpoint,
)
from .insight import CellImages

NO_CLASSIFIER = "Restore a checkpoint first: evaluation needs a trained classifier."
NO_DATA = "No images to evaluate on: give the panel labelled images with set_data(...)."
LOSS_CARD_WIDTH = 150  # wide enough for "predicted X · true Y · p=0.12" on two lines


class EvaluationPanel(widgets.VBox):
    """Evaluate a classifier on a DataSource (usually the session's validation images)."""

    def __init__(self, classifier: ImageClassifier | None = None, data: DataSource | None = None,
                 top_losses: int = 8, **kwargs: Any):
        super().__init__(**kwargs)
        self.classifier = classifier
        self.data = data
        self.top_losses = top_losses
        self.metrics: ClassifierMetrics | None = None
        self.status = widgets.HTML()
        self.evaluate_button = button("Evaluate", self.evaluate, icon="check-square",
                                      style="primary")
        self.using = widgets.HTML(using_checkpoint(classifier))  # which checkpoint, in words
        self.accuracy = widgets.HTML()
        self.table = widgets.HTML()
        self.confusion_chart = figure("Confusion matrix", height=340)
        self.top_loss_cards = card_grid(LOSS_CARD_WIDTH)
        self.cell_images = CellImages()  # a clicked confusion cell's images
        # Hidden until there is an evaluation: empty axes and tables only raise questions.
        self.results = widgets.VBox([
            self.accuracy,
            widgets.HBox([self.table, self.confusion_chart], layout=widgets.Layout(
                flex_flow="row wrap", align_items="flex-start", grid_gap="16px")),
            self.cell_images,
            widgets.HTML("<b>Largest losses</b>: the images the classifier is least right "
                         "about, each marked ✓ right or ✗ wrong"),
            self.top_loss_cards,
        ])
        self.children = [self.using, widgets.HBox([self.evaluate_button, self.status]),
                         self.results]
        self._forget_results()

    # -- public actions ---------------------------------------------------------------

    def set_classifier(self, classifier: ImageClassifier | None, best: bool = False) -> None:
        """Evaluate `classifier` from now on (`best`: its checkpoint is the session's best);
        an evaluation of another one is cleared."""
        self.classifier = classifier
        self.using.value = using_checkpoint(classifier, best)
        self._forget_results()

    def set_data(self, data: DataSource | None) -> None:
        """Evaluate on `data` from now on; an evaluation on other images is cleared."""
        self.data = data
        self._forget_results()

    @reports_errors()
    def evaluate(self) -> ClassifierMetrics:
        """Evaluate the classifier on every image of the data, show and return the metrics."""
        if self.classifier is None:
            raise ValueError(NO_CLASSIFIER)
        if self.data is None:
            raise ValueError(NO_DATA)
        n = len(self.data)
        # Sent to the browser before the blocking call, so the user sees that work started.
        self.status.value = message(f"Evaluating {n} images…")
        self.evaluate_button.disabled = True
        try:
            metrics = self.classifier.evaluation(self.data)
        finally:
            self.evaluate_button.disabled = False
        self.metrics = metrics
        self._show(metrics)
        self.status.value = message(f"Evaluated {n} images.", "success")
        return metrics

    @reports_errors()
    def show_cell(self, true: str, predicted: str) -> list[dict[str, Any]]:
        """Show the images of class `true` predicted as `predicted`, with probabilities."""
        from ..compare import cell_images

        m = self.metrics
        if m is None or m.probabilities is None:
            raise ValueError("Evaluate first: the confusion matrix comes from an evaluation.")
        rows = cell_images(list(m.classes), list(m.labels), list(m.sources or ()),
                           m.probabilities, true, predicted)
        self.cell_images.show(true, predicted, rows)
        return rows

    # -- drawing ------------------------------------------------------------------------

    def _forget_results(self) -> None:
        self.metrics = None
        self.results.layout.display = "none"
        if self.classifier is None:
            self.status.value = message(NO_CLASSIFIER)
        elif self.data is None:
            self.status.value = message(NO_DATA)
        else:
            self.status.value = message(f"Click Evaluate to measure the classifier on "
                                        f"{len(self.data)} images.")

    def _show(self, metrics: ClassifierMetrics) -> None:
        confusion = metrics.confusion
        correct, total = int(confusion.values.trace()), int(confusion.values.sum())
        self.accuracy.value = (f"<span style='font-size:20px'><b>{metrics.accuracy:.1%}</b></span>"
                               f" accuracy ({correct} of {total} correct)")
        rows = [[name, f"{r.precision:.3f}", f"{r.recall:.3f}", f"{r.f1:.3f}", int(r.support)]
                for name, r in metrics.precision_recall.iterrows()]
        self.table.value = table(["class", "precision", "recall", "F1", "support"], rows)
        confusion_heatmap(self.confusion_chart, list(metrics.classes), confusion.values.tolist(),
                          self.show_cell)
        self.cell_images.clear()
        self.top_loss_cards.children = [self._loss_card(row)
                                        for row in metrics.top_losses(self.top_losses).itertuples()]
        self.results.layout.display = ""

    @staticmethod
    def _loss_card(row: Any) -> widgets.VBox:
        png, problem = thumbnail_or_reason(row.source)
        mark = (f"✓ right: {row.label}" if row.predicted == row.label
                else f"✗ wrong: said {row.predicted}, is {row.label}")
        caption = [mark, f"p({row.label}) = {row.probability_of_label:.2f}",
                   Path(str(row.source)).name]
        return thumbnail_card(png, caption, tooltip=f"{row.source}\nloss {row.loss:.3f}",
                              width=LOSS_CARD_WIDTH, problem=problem)
