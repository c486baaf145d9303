"""DatasetPreview: what a data source holds before training — images per class (split into
training and validation when known), a page of thumbnails for one class at a time, and the
files that were skipped and why."""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import traitlets

from ..data import DataSource, Item
from ..parameters import ModelParameters
from ..record import split_for
from ..session import TrainingSession
from .common import (
    COLOURS,
    button,
    card_grid,
    escape,
    figure,
    message,
    reports_errors,
    table,
    thumbnail_card,
    thumbnail_or_reason,
)

MAX_SKIPPED_ROWS = 200  # thousands of bad files must not become a table the browser chokes on
AUTO_SPLIT_LIMIT = 100_000  # above this, sorting every path just for a preview is not cheap


class DatasetPreview(widgets.VBox):
    """Images per class, thumbnails one class and one page at a time, and skipped files.

    `source` is a DataSource (shown with the automatic split a session would make) or a
    TrainingSession (shown with its actual training / validation split).
    """

    class_name = traitlets.Unicode(help="The class whose thumbnails are shown.")
    page = traitlets.Int(0, help="The page of thumbnails shown, counted from 0.")

    def __init__(self, source: DataSource | TrainingSession, page_size: int = 12,
                 **kwargs: Any):
        super().__init__(**kwargs)
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self.page_size = page_size
        self._pngs: OrderedDict[Path, bytes] = OrderedDict()
        self._by_class: dict[str, list[Item]] = {}
        self._validation: set[Path] = set()
        self.status = widgets.HTML()
        self.summary = widgets.HTML()
        self.chart = figure("Images per class", height=260, barmode="stack")
        self.class_picker = widgets.Dropdown(description="Class")
        self.previous_button = button("Previous", self.previous_page, icon="chevron-left")
        self.next_button = button("Next", self.next_page, icon="chevron-right")
        self.page_label = widgets.Label()
        self.grid = card_grid()
        self.skipped = widgets.HTML()
        self.children = [
            self.summary, self.chart,
            widgets.HBox([self.class_picker, self.previous_button, self.page_label,
                          self.next_button]),
            self.grid, widgets.HTML("<b>Skipped files</b>"), self.skipped, self.status,
        ]
        self.class_picker.observe(self._picked, "value")
        self.set_source(source)

    # -- public actions ---------------------------------------------------------------

    def set_source(self, source: DataSource | TrainingSession) -> None:
        """Show another data source or session, starting at its first class."""
        train, valid, how = _split_of(source)
        self.source = source
        self._validation = {i.path for i in valid}
        self._by_class = {c: [] for c in source.classes}
        for item in sorted([*train, *valid], key=lambda i: str(i.path)):
            self._by_class.setdefault(item.label, []).append(item)
        self._pngs.clear()
        self._show_summary(train, valid, how, source.skipped)
        self._show_counts(train, valid, how)
        self._show_skipped(source.skipped)
        first = next(iter(self._by_class))
        self.class_picker.options = list(self._by_class)
        if self.class_name != first:
            self.class_name = first  # shows its first page through _class_changed
        elif self.page:
            self.page = 0  # through _page_changed
        else:
            self._show_page()  # no trait changes, yet the images are new

    @reports_errors()
    def show_class(self, name: str) -> None:
        """Show the first page of thumbnails of class `name`."""
        if name not in self._by_class:
            raise ValueError(f"no class {name!r}; the classes are {list(self._by_class)}")
        self.class_name = name

    @reports_errors()
    def next_page(self) -> None:
        """Show the next page of the current class (stays on the last page)."""
        self.page = min(self.page + 1, self.page_count - 1)

    @reports_errors()
    def previous_page(self) -> None:
        """Show the previous page of the current class (stays on the first page)."""
        self.page = max(self.page - 1, 0)

    @property
    def page_count(self) -> int:
        return max(1, math.ceil(len(self._by_class.get(self.class_name, [])) / self.page_size))

    @property
    def thumbnails_shown(self) -> list[Path]:
        """The image files on the page shown now, in order."""
        return [item.path for item in self._page_items()]

    # -- reacting to the traits ---------------------------------------------------------

    @traitlets.validate("class_name")
    def _known_class(self, proposal: traitlets.Bunch) -> str:
        if proposal.value not in self._by_class:
            raise traitlets.TraitError(f"no class {proposal.value!r}")
        return proposal.value

    @traitlets.validate("page")
    def _existing_page(self, proposal: traitlets.Bunch) -> int:
        if not 0 <= proposal.value < self.page_count:
            raise traitlets.TraitError(f"page must be 0 to {self.page_count - 1}, "
                                       f"got {proposal.value}")
        return proposal.value

    def _picked(self, change: traitlets.Bunch) -> None:
        if change.new in self._by_class:  # None while the options are being replaced
            self.class_name = change.new

    @traitlets.observe("class_name")
    def _class_changed(self, change: traitlets.Bunch) -> None:
        self.class_picker.value = change.new
        if self.page:
            self.page = 0  # renders through _page_changed
        else:
            self._show_page()

    @traitlets.observe("page")
    def _page_changed(self, _change: traitlets.Bunch) -> None:
        self._show_page()

    # -- drawing ------------------------------------------------------------------------

    def _page_items(self) -> list[Item]:
        start = self.page * self.page_size
        return self._by_class.get(self.class_name, [])[start:start + self.page_size]

    def _show_page(self) -> None:
        # Thumbnails are made here, one page at a time: a dataset can hold thousands of images.
        self.grid.children = [self._card(item) for item in self._page_items()]
        self.page_label.value = f"page {self.page + 1} of {self.page_count}"
        self.previous_button.disabled = self.page == 0
        self.next_button.disabled = self.page >= self.page_count - 1

    def _card(self, item: Item) -> widgets.VBox:
        png, problem = self._pngs.get(item.path), ""
        if png is None:
            png, problem = thumbnail_or_reason(item.path)
        if png is not None:
            self._pngs[item.path] = png
            self._pngs.move_to_end(item.path)
            while len(self._pngs) > 8 * self.page_size:  # paging back is instant; memory is flat
                self._pngs.popitem(last=False)
        role = ["validation"] if item.path in self._validation else []
        return thumbnail_card(png, [item.path.name, *role], str(item.path), problem=problem)

    def _show_summary(self, train: list[Item], valid: list[Item], how: str,
                      skipped: list) -> None:
        total, n_classes = len(train) + len(valid), len(self._by_class)
        parts = [f"{total} images in {n_classes} classes"]
        if how:
            parts.append(f"{how}: {len(train)} training, {len(valid)} validation")
        n_skipped = len(skipped)
        parts.append(f"{n_skipped} file{'s' * (n_skipped != 1)} skipped" if skipped
                     else "no files skipped")
        self.summary.value = f"<b>{escape(' · '.join(parts))}</b>"

    def _show_counts(self, train: list[Item], valid: list[Item], how: str) -> None:
        import plotly.graph_objects as go

        classes = list(self._by_class)
        with self.chart.batch_update():
            self.chart.data = []
            if not how:
                counts = [len(self._by_class[c]) for c in classes]
                self.chart.add_trace(go.Bar(x=classes, y=counts, name="images",
                                            marker_color=COLOURS["train"]))
                return
            for name, items, colour in (("training", train, COLOURS["train"]),
                                        ("validation", valid, COLOURS["valid"])):
                counts = Counter(i.label for i in items)
                self.chart.add_trace(go.Bar(x=classes, y=[counts[c] for c in classes],
                                            name=name, marker_color=colour))

    def _show_skipped(self, skipped: list) -> None:
        if not skipped:
            self.skipped.value = message("No files were skipped.")
            return
        rows = [[str(path), reason] for path, reason in skipped[:MAX_SKIPPED_ROWS]]
        more = len(skipped) - len(rows)
        note = message(f"… and {more} more") if more > 0 else ""
        self.skipped.value = (f"<div style='max-height:220px; overflow:auto'>"
                              f"{table(['file', 'reason'], rows)}</div>{note}")


def _split_of(source: DataSource | TrainingSession) -> tuple[list[Item], list[Item], str]:
    """Training items, validation items, and how the split is known ("" when it is not)."""
    if isinstance(source, TrainingSession):
        train, valid = source.split
        return list(train), list(valid), "split"
    if len(source.items) <= AUTO_SPLIT_LIMIT:
        train, valid = split_for(source, ModelParameters())  # what a new session would make
        return train, valid, "automatic split"
    return list(source.items), [], ""
