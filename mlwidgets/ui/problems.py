"""DataProblemsPanel: the Data tab's "Possible problems" — likely label errors, duplicates
(within and across the training / validation split) and outliers, each with keep / relabel
/ exclude. Decisions go to the session directory at once (decisions.json), so they survive
a kernel restart and switching between kinds of problems; a button starts a new session on
the cleaned data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from .common import (
    button,
    card_grid,
    escape,
    message,
    reports_errors,
    thumbnail_card,
    thumbnail_or_reason,
)

if TYPE_CHECKING:
    from ..problems import DataReport
    from ..session import TrainingSession

KINDS = {"label_issues": "Possible label errors", "duplicates": "Duplicates",
         "outliers": "Outliers"}
CARD_WIDTH = 170
MAX_CARDS = 30


class DataProblemsPanel(widgets.VBox):
    """Find and decide on possible problems in a session's images."""

    def __init__(self, session: TrainingSession | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.session = session
        self.report: DataReport | None = None
        self.new_session: TrainingSession | None = None
        self.status = widgets.HTML()
        self.scan_button = button("Find possible problems", self.scan, icon="search",
                                  tooltip="label errors (confident learning), duplicates and "
                                          "outliers, from the images' features")
        self.scan_button.layout.width, self.scan_button.layout.flex = "auto", "0 0 auto"
        self.kind = widgets.ToggleButtons(options=[(v, k) for k, v in KINDS.items()],
                                          value="label_issues", style={"button_width": "auto"})
        self.kind.observe(lambda _c: self._draw(), "value")
        self.grid = card_grid(CARD_WIDTH)
        self.decided = widgets.HTML()
        self.clean_button = button("New session on the cleaned data", self.start_clean_session,
                                   icon="plus", tooltip="a new session on these images with "
                                                        "your decisions applied")
        self.clean_button.layout.width = "auto"
        self.children = [widgets.HBox([self.scan_button, self.status]), self.kind, self.grid,
                         widgets.HBox([self.decided, self.clean_button])]
        self.add_class("mlwidgets-problems")
        self.set_session(session)

    # -- public actions ---------------------------------------------------------------

    def set_session(self, session: TrainingSession | None) -> None:
        self.session, self.report = session, None
        self.scan_button.disabled = self.clean_button.disabled = session is None
        self.grid.children = []
        self.status.value = message("Problems are looked for in a session's images: make "
                                    "or open a session first." if session is None else
                                    "Click to look for possible problems in the images.")
        self._count_decisions()

    @reports_errors()
    def scan(self, **options: Any) -> DataReport:
        """Look for problems (session.find_data_problems) and list them."""
        session = self._session()
        self.status.value = message("Looking for possible problems…")
        self.report = session.find_data_problems(**options)
        self.status.value = message(self.report.summary(), "success")
        self._draw()
        return self.report

    def show(self, kind: str) -> None:
        """Switch to "label_issues", "duplicates" or "outliers" (decisions stay)."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose one of {list(KINDS)}")
        self.kind.value = kind

    @reports_errors()
    def decide(self, path: str | os.PathLike, action: str, label: str | None = None) -> None:
        """Keep, relabel (to `label`) or exclude one image; stored in the session at once."""
        self._session().decisions.decide(path, action, label)
        self._draw()

    @reports_errors()
    def start_clean_session(self, directory: str | os.PathLike | None = None
                            ) -> TrainingSession:
        """A new session (same parameters) on the images with the decisions applied."""
        from ..session import TrainingSession

        session = self._session()
        cleaned = session.cleaned_data()
        self.new_session = TrainingSession.create(cleaned, session.parameters, directory)
        self.status.value = message(f"New session on {len(cleaned)} images: "
                                    f"{self.new_session.directory}", "success")
        return self.new_session

    # -- drawing ------------------------------------------------------------------------

    def _session(self) -> TrainingSession:
        if self.session is None:
            raise ValueError("no session: make or open one first")
        return self.session

    def _count_decisions(self) -> dict[str, dict[str, Any]]:
        found = self.session.decisions.all() if self.session is not None else {}
        counts = {a: sum(d["action"] == a for d in found.values())
                  for a in ("keep", "relabel", "exclude")}
        self.decided.value = message("Decisions: " + ", ".join(f"{n} {a}"
                                                               for a, n in counts.items()))
        return found

    def _draw(self) -> None:
        decisions = self._count_decisions()
        if self.report is None:
            return
        entries: list[tuple[Path, str, list[str]]] = []  # (path, its label, caption lines)
        labels = {i.path: i.label for part in self.session.split for i in part}
        if self.kind.value == "label_issues":
            entries = [(i.path, i.label, [f"labelled {i.label}", f"looks like {i.suggested}",
                                          f"p(label)={i.quality:.2f} · {i.split}"])
                       for i in self.report.label_issues]
        elif self.kind.value == "duplicates":
            for d in self.report.duplicates:
                kind = "exact copy" if d.exact else f"similarity {d.similarity:.3f}"
                where = "across train/valid" if d.across_split else ""
                entries.append((d.b, labels.get(d.b, ""), [f"duplicate of {d.a.name}", kind,
                                                           where]))
        else:
            entries = [(o.path, o.label, [f"labelled {o.label}", f"outlier score {o.score:.3f}",
                                          o.split]) for o in self.report.outliers]
        self.grid.children = [self._card(path, label, caption, decisions.get(str(path)))
                              for path, label, caption in entries[:MAX_CARDS]]
        if not entries:
            self.grid.children = [widgets.HTML(message(f"No {KINDS[self.kind.value].lower()}"
                                                       " found."))]

    def _card(self, path: Path, label: str, caption: list[str],
              decision: dict[str, Any] | None) -> widgets.VBox:
        png, problem = thumbnail_or_reason(path)
        now = "undecided" if decision is None else (
            f"relabelled {decision['label']}" if decision["action"] == "relabel"
            else {"keep": "kept", "exclude": "excluded"}[decision["action"]])
        card = thumbnail_card(png, [*filter(None, caption), path.name], tooltip=str(path),
                              width=CARD_WIDTH, problem=problem)
        state = widgets.HTML(f"<b>{escape(now)}</b>")
        keep = button("keep", lambda: self.decide(path, "keep"), tooltip="the label is right")
        exclude = button("exclude", lambda: self.decide(path, "exclude"),
                         tooltip="leave this image out of the cleaned data")
        others = [c for c in self.session.classes if c != label]
        relabel = widgets.Dropdown(options=[("relabel…", None), *[(c, c) for c in others]],
                                   layout=widgets.Layout(width=f"{CARD_WIDTH}px"))
        relabel.observe(lambda change: change["new"] is not None and self.decide(
            path, "relabel", change["new"]), "value")
        for b in (keep, exclude):
            b.layout.width = f"{CARD_WIDTH // 2 - 2}px"
        card.children = (*card.children, state, widgets.HBox([keep, exclude]), relabel)
        return card
