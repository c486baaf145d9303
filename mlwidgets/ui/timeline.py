"""Scrub a session's checkpoints, see each one's metrics and confusion, restore or export it.

Scrubbing reads only the in-memory checkpoint records (the store caches them), so it stays
instant over thousands of checkpoints; weights load only on Restore or Export.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..checkpoints import Checkpoint, best_of
from .common import (
    button,
    checkpoint_place,
    confusion_heatmap,
    escape,
    figure,
    message,
    reports_errors,
    table,
)
from .export import ExportForm
from .insight import CheckpointInsight

if TYPE_CHECKING:
    from ..classifier import ImageClassifier
    from ..coreml import ExportResult
    from ..session import TrainingSession

RestoreCallback = Callable[["ImageClassifier"], None]
# (row, loss metric, accuracy metric) of the metrics table
METRIC_ROWS = (("training", "train_loss", "train_accuracy"),
               ("validation", "valid_loss", "valid_accuracy"),
               ("last validation batch", "batch_valid_loss", "batch_valid_accuracy"))
BEST_MARK = "★"


def _locked(method: Callable) -> Callable:
    @functools.wraps(method)
    def run(self: CheckpointTimeline, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)
    return run


def checkpoint_label(checkpoint: Checkpoint, best: bool = False, step: bool = False) -> str:
    """'it 12 · val acc 0.97', with the phase when not training and ★ for the best;
    'paused at step 37' for a pause inside an iteration; `step` adds the step."""
    parts = [checkpoint_place(checkpoint, short=True, step=step)]
    m = checkpoint.metrics
    for key, short in (("valid_accuracy", "val acc"), ("train_loss", "loss")):
        if _finite(m.get(key)):
            parts.append(f"{short} {m[key]:.2f}" if key.endswith("accuracy")
                         else f"{short} {m[key]:.3g}")
            break
    return " · ".join(parts) + (f" {BEST_MARK}" if best else "")


def unique_labels(checkpoints: list[Checkpoint], best_index: int | None = None) -> list[str]:
    """One label a checkpoint, in time order, never the same twice: a label seen before (an
    iteration trained again after a resume) gets its step, then its place, added."""
    labels, seen = [], set()
    for i, c in enumerate(checkpoints):
        label = checkpoint_label(c, i == best_index)
        if label in seen:
            label = checkpoint_label(c, i == best_index, step=True)
        if label in seen:
            label = f"{label} (#{i + 1})"
        seen.add(label)
        labels.append(label)
    return labels


# What "best" means, in words, by the session's best_metric.
BEST_BY = {"valid_loss": "the lowest validation loss",
           "valid_accuracy": "the highest validation accuracy",
           "train_loss": "the lowest training loss",
           "train_accuracy": "the highest training accuracy"}


class CheckpointTimeline(widgets.VBox):
    """A slider over `session.checkpoints`: details, Best, Restore and a Core ML export form."""

    def __init__(self, session: TrainingSession):
        self.session = session
        self._lock = threading.RLock()  # refresh() comes from the follower's thread
        self.checkpoints: list[Checkpoint] = []
        self.labels: list[str] = []
        self.best_index: int | None = None
        self.classifier: ImageClassifier | None = None  # the last restored one
        self._index: int | None = None
        self._index_of: dict[str, int] = {}
        self._restore_callbacks: list[RestoreCallback] = []
        self._loaded: ImageClassifier | None = None  # loaded for export, not restored
        self._drawn: Any = object()  # what the heat map shows, to skip identical redraws
        self.slider = widgets.IntSlider(description="Checkpoint", readout=False,
                                        continuous_update=True,
                                        layout=widgets.Layout(width="60%"))
        self.label = widgets.HTML()
        self.best_button = button("Best", self.select_best, icon="star",
                                  tooltip="select the best checkpoint")
        self.restore_button = button("Restore", self.restore, icon="undo", style="primary",
                                     tooltip="load this checkpoint's weights into a classifier")
        self.details = widgets.HTML()
        self.damaged = widgets.HTML()  # checkpoints that fail their checks: shown, not hidden
        self.heatmap = figure("Validation confusion", height=300)
        self.status = widgets.HTML()
        self.export_form = ExportForm(lambda: self.classifier_for(self.selected), session)
        self.slider.observe(lambda change: self.select(change["new"]), names="value")
        self.insight = CheckpointInsight(self)  # compare, confusion cells, saliency
        super().__init__([
            widgets.HBox([self.slider, self.label]),
            widgets.HBox([self.best_button, self.restore_button]),
            self.status, self.damaged, self.details, self.heatmap, self.insight,
            widgets.Accordion([self.export_form], titles=("Export to Core ML",)),
        ])
        self.refresh()

    # -- choosing a checkpoint ---------------------------------------------------------------

    @property
    def selected(self) -> Checkpoint | None:
        return None if self._index is None else self.checkpoints[self._index]

    @_locked
    def refresh(self) -> None:
        """Re-read the session's checkpoints; keep the selection, or follow the latest."""
        previous = self.selected
        was_latest = self._index is not None and self._index == len(self.checkpoints) - 1
        self.checkpoints, damaged = self.session.checkpoint_listing()
        self.damaged.value = "".join(message(f"Damaged, left out: {reason}", "error")
                                     for reason in damaged.values())
        self._index_of = {c.id: i for i, c in enumerate(self.checkpoints)}
        self.best_index = self._find_best()
        self.labels = unique_labels(self.checkpoints, self.best_index)
        self.best_button.disabled = self.best_index is None
        self.insight.checkpoints_changed(self.checkpoints, self.labels)
        if not self.checkpoints:
            self._index = None
            self.slider.disabled, self.restore_button.disabled = True, True
            self.label.value = message("no checkpoints yet")
            self.details.value = ""
            self.export_form.for_checkpoint(None)
            return
        self.slider.disabled = False
        self.slider.max = len(self.checkpoints) - 1
        if previous is None or was_latest:
            target = len(self.checkpoints) - 1
        else:  # the same checkpoint; if retention removed it, the one at its place
            target = self._index_of.get(previous.id, min(self._index, self.slider.max))
        self._index = None  # labels may have changed (a new best): show them again
        self.select(target)

    @_locked
    def select(self, which: int | str | Checkpoint) -> Checkpoint:
        """Select a checkpoint by index (negative from the end), id, or record."""
        index = self._resolve(which)
        if index == self._index:
            return self.checkpoints[index]
        self._index = index
        self.slider.value = index
        checkpoint = self.checkpoints[index]
        self.label.value = f"<b>{escape(self.labels[index])}</b>"
        self.details.value = self._details(checkpoint)
        self.restore_button.disabled = not checkpoint.has_model
        self.export_form.for_checkpoint(checkpoint)
        self._draw_confusion(checkpoint)
        self.insight.selected(checkpoint)
        return checkpoint

    @reports_errors()
    def select_best(self) -> Checkpoint:
        """Select the best checkpoint by the session's `best_metric`."""
        if self.best_index is None:
            metric = self.session.session_parameters.best_metric
            raise ValueError(f"no checkpoint with a classifier has a {metric!r} value yet")
        return self.select(self.best_index)

    def _resolve(self, which: int | str | Checkpoint) -> int:
        if not self.checkpoints:
            raise ValueError(f"session {self.session.directory} has no checkpoints yet")
        if isinstance(which, Checkpoint):
            which = which.id
        if isinstance(which, str):
            if which not in self._index_of:
                raise KeyError(f"no checkpoint {which!r} in this timeline; call refresh() "
                               "if it was just written")
            return self._index_of[which]
        n = len(self.checkpoints)
        if not -n <= which < n:
            raise IndexError(f"checkpoint index {which} is out of range (0…{n - 1})")
        return which % n

    def show_cell(self, true: str, predicted: str) -> list[dict[str, Any]]:
        """Show the validation images of one confusion cell of the selected checkpoint."""
        return self.insight.show_cell(true, predicted)

    def compare_with(self, other: int | str | Checkpoint) -> Any:
        """What changed from `other` to the selected checkpoint (see CheckpointInsight)."""
        return self.insight.compare_with(other)

    def _find_best(self) -> int | None:
        best = best_of(self.checkpoints, self.session.session_parameters.best_metric)
        return None if best is None else self._index_of[best.id]

    # -- showing it ----------------------------------------------------------------------------

    def _details(self, c: Checkpoint) -> str:
        when = c.date.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        metric = self.session.session_parameters.best_metric
        best = f" · best: {BEST_BY.get(metric, 'by ' + metric)}" if (
            self._index == self.best_index) else ""
        about = (f"{c.id} · {c.phase.replace('_', ' ')} · iteration {c.iteration} · "
                 f"step {c.step_number} · {when}{best}")
        m = c.metrics
        rows = [[name, _number(m.get(loss)), _number(m.get(accuracy))]
                for name, loss, accuracy in METRIC_ROWS if loss in m or accuracy in m]
        known = {key for _, *keys in METRIC_ROWS for key in keys}
        rows += [[key, _number(value), ""] for key, value in m.items() if key not in known]
        return message(about) + table(["", "loss", "accuracy"], rows)

    def _draw_confusion(self, checkpoint: Checkpoint) -> None:
        matrix = checkpoint.confusion
        classes = list(checkpoint.model.get("classes") or self.session.classes)
        shown = (tuple(classes), None if matrix is None else tuple(map(tuple, matrix)))
        if shown == self._drawn:
            return
        self._drawn = shown
        confusion_heatmap(self.heatmap, classes, matrix, self.show_cell)
        self.heatmap.layout.title.text = ("Validation confusion" if matrix is not None else
                                          "No confusion matrix recorded for this checkpoint")

    # -- restoring and exporting ---------------------------------------------------------------

    def on_restore(self, callback: RestoreCallback) -> Callable[[], None]:
        """Call `callback(classifier)` after each restore; returns a function that unsubscribes."""
        self._restore_callbacks.append(callback)
        return lambda: (self._restore_callbacks.remove(callback)
                        if callback in self._restore_callbacks else None)

    @reports_errors()
    def restore(self) -> ImageClassifier:
        """Load the selected checkpoint's weights into `self.classifier` and tell subscribers."""
        checkpoint = self._selected_or_raise()
        self.status.value = message(f"Restoring {checkpoint.id}…")
        self.classifier = self.classifier_for(checkpoint)
        for callback in list(self._restore_callbacks):
            callback(self.classifier)
        self.status.value = message(f"Restored {self.labels[self._index]} ({checkpoint.id}): "
                                    "Evaluate and Preview now use it.", "success")
        return self.classifier

    def classifier_for(self, checkpoint: Checkpoint | None) -> ImageClassifier:
        """`checkpoint`'s classifier: the restored or last exported one, else loaded now."""
        from ..classifier import ImageClassifier

        if checkpoint is None:
            checkpoint = self._selected_or_raise()
        if not checkpoint.has_model:
            raise ValueError(
                f"checkpoint {checkpoint.id} ({checkpoint.phase.replace('_', ' ')}, iteration "
                f"{checkpoint.iteration}) holds no classifier, only progress through feature "
                "extraction; select a training checkpoint")
        for loaded in (self.classifier, self._loaded):
            if loaded is not None and loaded.checkpoint and loaded.checkpoint.id == checkpoint.id:
                return loaded
        self._loaded = ImageClassifier.from_checkpoint(checkpoint)
        return self._loaded

    def export(self, path: str | None = None, **fields: Any) -> ExportResult:
        """Export the selected checkpoint to Core ML (see `ExportForm.export` for `fields`)."""
        return self.export_form.export(path, **fields)

    def _selected_or_raise(self) -> Checkpoint:
        if self.selected is None:
            raise ValueError(f"session {self.session.directory} has no checkpoints yet")
        return self.selected


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"

