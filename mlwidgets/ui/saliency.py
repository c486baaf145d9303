"""Grad-CAM as widgets: one heat map over its image (or the sentence saying why there is
none), and a picker for the images the Preview tab shows with its classifier."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from ..saliency import Saliency, classifier_saliency
from .common import button, escape, message, reports_errors

SALIENCY_SIZE = 192


class SaliencyView(widgets.HBox):
    """One Grad-CAM map over its image, or the sentence saying why there is none."""

    def __init__(self) -> None:
        self.picture = widgets.Image(format="png", layout=widgets.Layout(
            width=f"{SALIENCY_SIZE}px", height=f"{SALIENCY_SIZE}px", display="none"))
        self.text = widgets.HTML(layout=widgets.Layout(max_width="520px"))
        self.saliency: Saliency | None = None
        super().__init__([self.picture, self.text], layout=widgets.Layout(grid_gap="12px"))
        self.add_class("mlwidgets-saliency")

    def show(self, saliency: Saliency, title: str = "") -> None:
        self.saliency = saliency
        self.picture.value = saliency.overlay_png(SALIENCY_SIZE)
        self.picture.layout.display = ""
        lines = [f"<b>{escape(title)}</b>" if title else "",
                 f"Grad-CAM for <b>{escape(saliency.target)}</b> "
                 f"(p={saliency.probability:.2f}; predicted {escape(saliency.predicted)})"]
        if saliency.reason:
            lines.append(message("No heat map: " + saliency.reason))
        else:
            lines.append("red: where the evidence for this class is")
        if saliency.note:
            lines.append(message("Note: " + saliency.note))
        self.text.value = "<br>".join(line for line in lines if line)

    def clear(self) -> None:
        self.saliency = None
        self.picture.layout.display = "none"
        self.text.value = ""


class ClassifierSaliency(widgets.VBox):
    """Grad-CAM for the images a panel shows with a classifier (the Preview tab)."""

    def __init__(self, classifier: Callable[[], Any], images: Callable[[], tuple[list, list]]):
        self._classifier, self._images = classifier, images
        self.picker = widgets.Dropdown(description="Where it looks:", options=[],
                                       style={"description_width": "initial"})
        self.show_button = button("Show", lambda: self.show(self.picker.index or 0), icon="eye")
        self.status = widgets.HTML()
        self.view = SaliencyView()
        super().__init__([widgets.HBox([self.picker, self.show_button]), self.status,
                          self.view])

    def images_changed(self) -> None:
        images, names = self._images()
        self.picker.options = [(name, k) for k, name in enumerate(names)]
        self.view.clear()

    @reports_errors()
    def show(self, which: int | Any = 0) -> Saliency:
        """Grad-CAM of the classifier on a shown image (its position) or any image."""
        classifier = self._classifier()
        if classifier is None:
            raise ValueError("Restore a checkpoint first: saliency needs a trained classifier.")
        images, names = self._images()
        if isinstance(which, int):
            if not images:
                raise ValueError("Predict some images first.")
            image, name = images[which], names[which]
        else:
            image, name = which, Path(str(which)).name
        from ..images import open_image

        found = classifier_saliency(classifier, open_image(image))
        self.view.show(found, name)
        self.status.value = ""
        return found
