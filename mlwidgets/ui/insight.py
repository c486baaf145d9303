"""What changed and why, as widgets: the images of a confusion cell, a checkpoint diff with
the images it fixed and broke, and where the selected checkpoint looks (ui/saliency.py).

Views over the engine (`session.compare`, `session.confusion_cell`, `session.saliency`,
mlwidgets.saliency for a classifier); every button's action is a public method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..checkpoints import Checkpoint
from ..saliency import Saliency
from .common import (
    Debounced,
    button,
    card_grid,
    escape,
    message,
    reports_errors,
    table,
    thumbnail_card,
    thumbnail_or_reason,
)
from .saliency import SaliencyView

if TYPE_CHECKING:
    from ..compare import CheckpointDiff, ImageChange
    from ..session import TrainingSession
    from .timeline import CheckpointTimeline

CARD_WIDTH = 150
MAX_CARDS = 48  # a cell of thousands of images must not become thousands of widgets


def image_card(path: Any, caption: list[str], on_saliency: Callable[[Any], Any] | None = None,
               tooltip: str = "") -> widgets.VBox:
    """A thumbnail with its caption, and a "where it looks" button when `on_saliency`."""
    png, problem = thumbnail_or_reason(path)
    card = thumbnail_card(png, caption, tooltip=tooltip or str(path), width=CARD_WIDTH,
                          problem=problem)
    if on_saliency is not None:
        look = button("where it looks", lambda: on_saliency(path), icon="eye",
                      tooltip="Grad-CAM: the parts of the image that raise the predicted "
                              "class's score")
        look.layout.width = f"{CARD_WIDTH}px"
        card.children = (*card.children, look)
    return card


class CellImages(widgets.VBox):
    """The images of one confusion cell, with their probabilities."""

    def __init__(self, on_saliency: Callable[[Any], Any] | None = None):
        self.title = widgets.HTML()
        self.grid = card_grid(CARD_WIDTH)
        self.rows: list[dict[str, Any]] = []
        self.on_saliency = on_saliency
        super().__init__([self.title, self.grid])
        self.add_class("mlwidgets-cell")

    def show(self, true: str, predicted: str, rows: list[dict[str, Any]], where: str = "") -> None:
        self.rows = rows
        kind = "right" if true == predicted else "wrong"
        self.title.value = (f"<b>true {escape(true)}, predicted {escape(predicted)}</b> "
                            f"({kind}): {len(rows)} image(s){escape(where)}"
                            + (f", the first {MAX_CARDS} shown" if len(rows) > MAX_CARDS else ""))
        self.grid.children = [
            image_card(r["path"], [f"p({predicted})={r['probability']:.2f}",
                                   Path(str(r["path"])).name], self.on_saliency)
            for r in rows[:MAX_CARDS]]

    def clear(self) -> None:
        self.rows, self.title.value, self.grid.children = [], "", []


class CheckpointInsight(widgets.VBox):
    """Below the timeline: compare the selected checkpoint with another, open a confusion
    cell, and see where the selected checkpoint looks in an image."""

    def __init__(self, timeline: CheckpointTimeline):
        self.timeline = timeline
        self.diff: CheckpointDiff | None = None
        self.pinned: Any = None  # an image whose map follows the slider
        self.other = widgets.Dropdown(description="Compare with…", options=[],
                                      style={"description_width": "initial"},
                                      layout=widgets.Layout(width="360px"))
        self.compare_button = button("Compare", self._compare_clicked, icon="exchange",
                                     tooltip="what changed between this checkpoint and the "
                                             "chosen one, on the validation images")
        self.status = widgets.HTML()
        self.summary = widgets.HTML()
        self.fixed = card_grid(CARD_WIDTH)
        self.broken = card_grid(CARD_WIDTH)
        self.changes = widgets.VBox([
            widgets.HTML("<b>Fixed</b> (wrong before, right now)"), self.fixed,
            widgets.HTML("<b>Broken</b> (right before, wrong now)"), self.broken],
            layout=widgets.Layout(display="none"))
        self.cell = CellImages(self.show_saliency)
        self.saliency = SaliencyView()
        self._follow_pinned = Debounced(self._redraw_pinned)
        super().__init__([widgets.HBox([self.other, self.compare_button]), self.status,
                          self.summary, self.changes, self.cell, self.saliency])
        self.add_class("mlwidgets-insight")
        self.changes.add_class("mlwidgets-diff")

    @property
    def session(self) -> TrainingSession:
        return self.timeline.session

    # -- following the timeline ------------------------------------------------------------

    def checkpoints_changed(self, checkpoints: Sequence[Checkpoint], labels: Sequence[str]) -> None:
        """New listing: the checkpoints with a classifier are the ones to compare with."""
        options = [(label, c.id) for c, label in zip(checkpoints, labels) if c.has_model]
        previous = self.other.value
        self.other.options = options
        ids = [value for _, value in options]
        if previous in ids:
            self.other.value = previous
        elif ids:
            self.other.value = ids[0]  # the first: "what did training change since then"

    def selected(self, checkpoint: Checkpoint) -> None:
        """The timeline selected another checkpoint: old results no longer apply."""
        self.diff = None
        self.summary.value, self.status.value = "", ""
        self.changes.layout.display = "none"
        self.cell.clear()
        if self.pinned is not None:
            self._follow_pinned()  # once the slider rests (ui.common.Debounced)

    # -- public actions -----------------------------------------------------------------------

    @reports_errors()
    def compare_with(self, other: str | int | Checkpoint) -> CheckpointDiff:
        """Compare `other` (before) with the selected checkpoint (now) and show the diff."""
        current = self.timeline.selected
        if current is None:
            raise ValueError("no checkpoint is selected")
        self.status.value = message("Comparing… (the first time, each checkpoint predicts "
                                    "the validation images once)")
        diff = self.session.compare(other, current)
        self.diff = diff
        self._show(diff)
        self.status.value = ""  # the summary below says it all
        return diff

    @reports_errors()
    def show_cell(self, true: str, predicted: str) -> list[dict[str, Any]]:
        """The validation images of class `true` the selected checkpoint predicts as
        `predicted`, with their probabilities."""
        current = self.timeline.selected
        if current is None:
            raise ValueError("no checkpoint is selected")
        rows = self.session.confusion_cell(true, predicted, current)
        self.cell.show(true, predicted, rows, f" at {current.id}")
        return rows

    @reports_errors()
    def show_saliency(self, image: Any, pin: bool = True) -> Saliency:
        """Where the selected checkpoint looks in `image`; with `pin`, the map follows the
        slider (see how attention changes over training)."""
        current = self.timeline.selected
        if current is None:
            raise ValueError("no checkpoint is selected")
        found = self.session.saliency(image, current)
        self.pinned = image if pin else self.pinned
        self.saliency.show(found, f"{Path(str(image)).name} at {current.id}")
        return found

    # -- drawing -----------------------------------------------------------------------------

    def _redraw_pinned(self) -> None:
        """The pinned image's map at the checkpoint selected now, if it holds a classifier."""
        current = self.timeline.selected
        if self.pinned is not None and current is not None and current.has_model:
            self.show_saliency(self.pinned)

    def _compare_clicked(self) -> None:
        if self.other.value is None:
            raise ValueError("no other checkpoint with a classifier to compare with")
        self.compare_with(self.other.value)

    def _show(self, diff: CheckpointDiff) -> None:
        rows = [[name, f"{r.precision_a:.2f} → {r.precision_b:.2f}", _delta(r.precision_change),
                 f"{r.recall_a:.2f} → {r.recall_b:.2f}", _delta(r.recall_change),
                 f"{r.f1_a:.2f} → {r.f1_b:.2f}", _delta(r.f1_change), int(r.support)]
                for name, r in diff.per_class.iterrows()]
        self.summary.value = (
            f"<b>{escape(diff.b)}</b> compared with <b>{escape(diff.a)}</b>: accuracy "
            f"{diff.accuracy_a:.1%} → {diff.accuracy_b:.1%}; {len(diff.fixed)} fixed, "
            f"{len(diff.broken)} broken, {len(diff.changed)} changed while wrong, "
            f"{diff.unchanged_right} right and {diff.unchanged_wrong} wrong in both"
            + table(["class", "precision", "Δ", "recall", "Δ", "F1", "Δ", "support"], rows))
        self.fixed.children = [self._change_card(c) for c in diff.fixed[:MAX_CARDS]]
        self.broken.children = [self._change_card(c) for c in diff.broken[:MAX_CARDS]]
        self.changes.layout.display = "" if not diff.is_empty else "none"

    def _change_card(self, change: ImageChange) -> widgets.VBox:
        return image_card(change.path, [f"{change.before} → {change.after} (true {change.label})",
                                        f"p(true) {change.p_before:.2f} → {change.p_after:.2f}",
                                        Path(str(change.path)).name], self.show_saliency)


def _delta(value: float) -> str:
    return "0" if abs(value) < 5e-4 else f"{value:+.2f}"
