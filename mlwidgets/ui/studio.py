"""The Studio: the panels as tabs in the order of the work, like the Create ML app."""

from __future__ import annotations

import os
from itertools import zip_longest
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from ..classifier import ImageClassifier
from ..data import DataSource
from ..events import EventType
from ..parameters import ModelParameters
from ..record import SESSION_FILE
from ..session import TrainingSession
from .common import message
from .dashboard import TrainingDashboard
from .evaluation import EvaluationPanel
from .predict import PredictionPanel
from .preview import DatasetPreview
from .problems import DataProblemsPanel
from .timeline import CheckpointTimeline

TABS = ("Data", "Train", "Checkpoints", "Evaluate", "Preview")


class Studio(widgets.Tab):
    """`Studio(source)`: source is a folder of labelled image folders, a DataSource, a
    TrainingSession, or a session directory (reopened, followed live, and resumable).

    With a `session_dir` that already holds a session (the notebook ran before, the kernel
    restarted), that session is reopened with everything it recorded, on its own stored
    data and parameters; one line says so when the ones passed here differ.

    `runner="process"` trains in a child process that outlives the kernel (also a choice in
    the Train tab); a Studio reopened on its session follows it live and can pause it.
    """

    def __init__(self, source: str | os.PathLike | DataSource | TrainingSession,
                 parameters: ModelParameters | None = None,
                 session_dir: str | os.PathLike | None = None, follow_interval: float = 0.5,
                 runner: str = "thread"):
        self.session, self.data = _open(source)
        reopened_note = ""
        if self.session is None and _holds_session(session_dir):
            self.session, reopened_note = _reopen(session_dir, self.data, parameters)
        self.classifier: ImageClassifier | None = None
        self.preview = DatasetPreview(self.session or self.data)
        self.problems = DataProblemsPanel(self.session)  # the Data tab's "Possible problems"
        self.dashboard = TrainingDashboard(self.session or self.data, parameters, session_dir,
                                           follow_interval, runner)
        self.timeline: CheckpointTimeline | None = None
        self.evaluation = EvaluationPanel()
        self.prediction = PredictionPanel()
        self._checkpoints_tab = widgets.VBox([widgets.HTML(message(
            "Checkpoints appear here once training has started."))])
        data_tab = widgets.VBox([self.preview, widgets.Accordion(
            [self.problems], titles=("Possible problems",))])
        super().__init__(children=[data_tab, self.dashboard, self._checkpoints_tab,
                                   self.evaluation, self.prediction], titles=TABS)
        self._timeline_stale = False  # new checkpoints arrived while the tab was hidden
        self.dashboard.on_session(self._session_made)
        self.dashboard.on_events(self._events)
        self.observe(lambda _change: self._refresh_timeline_if_shown(), "selected_index")
        if self.session is not None:
            self._session_made(self.session)
        if reopened_note:
            self.dashboard.status.value = message(reopened_note)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until training in this kernel ends and every tab shows it; False on timeout.

        Useful in scripts and tutorials; in a notebook the tabs keep up on their own.
        """
        job = self.session.job if self.session is not None else None
        if job is not None and not job.wait(timeout):
            return False
        self.dashboard.poll()
        if self._timeline_stale:
            self._refresh_timeline()
        return True

    def ready(self, task: str = "") -> bool:
        """True once training has ended with checkpoints to work with. Otherwise prints one
        line saying so and returns False: an app's cells call this instead of waiting, so the
        kernel (and every button) stays free during Run All and in Voila."""
        s = self.session
        if s is not None and not s.state.is_active and s.checkpoints:
            self.wait(10)  # every tab shows the end (the thread is ending, if it runs here)
            return True
        then = f" to {task}" if task else ""
        if s is None:
            print(f"Nothing trained yet: press Start, then run this cell again{then}.")
        else:
            p = s.progress
            print(f"Training is {p.state} (iteration {p.iteration}/{p.total_iterations}): "
                  f"run this cell again{then} once the Train tab says completed.")
        return False

    def show(self, tab: str) -> None:
        """Switch to a tab by its title ("Data", "Train", "Checkpoints", ...)."""
        self.selected_index = TABS.index(tab)

    def close(self) -> None:
        self.dashboard.close()
        super().close()

    def _session_made(self, session: TrainingSession) -> None:
        self.session = session
        self.problems.set_session(session)
        train, valid = session.split
        examples = valid or train
        origin = f"the validation images of {session.directory.name}"
        self.evaluation.set_data(DataSource(examples, origin=origin, check=False))
        self.prediction.set_examples([item.path for item in _classes_in_turn(examples)])
        # Built now, not when the first checkpoint arrives: its plotly figures take ~0.1 s,
        # which would otherwise compete with the training thread.
        self._show_timeline()

    def _events(self, events: list[dict[str, Any]]) -> None:
        if self.timeline is not None and any(e["type"] == EventType.CHECKPOINT for e in events):
            # A hidden timeline catches up when shown: redrawing it for every checkpoint
            # would compete with the training thread for nothing.
            self._timeline_stale = True
            self._refresh_timeline_if_shown()

    def _refresh_timeline_if_shown(self) -> None:
        if self._timeline_stale and self.selected_index == TABS.index("Checkpoints"):
            self._refresh_timeline()

    def _refresh_timeline(self) -> None:
        self._timeline_stale = False
        self.timeline.refresh()

    def _show_timeline(self) -> None:
        self.timeline = CheckpointTimeline(self.session)
        self.timeline.on_restore(self._restored)
        self._checkpoints_tab.children = [self.timeline]

    def _restored(self, classifier: ImageClassifier) -> None:
        self.classifier = classifier
        tl = self.timeline
        best = tl is not None and tl.best_index is not None and (
            tl.checkpoints[tl.best_index].id == getattr(classifier.checkpoint, "id", None))
        self.evaluation.set_classifier(classifier, best)
        self.prediction.set_classifier(classifier, best)


def _open(source: Any) -> tuple[TrainingSession | None, DataSource | None]:
    if isinstance(source, TrainingSession):
        return source, None
    if isinstance(source, DataSource):
        return None, source
    path = Path(source).expanduser()
    if (path / SESSION_FILE).is_file():
        return TrainingSession.restore(path), None
    return None, DataSource.labeled_directories(path)


def _holds_session(session_dir: Any) -> bool:
    return session_dir is not None and (Path(session_dir).expanduser() / SESSION_FILE).is_file()


def _reopen(session_dir: Any, data: DataSource | None,
            parameters: ModelParameters | None) -> tuple[TrainingSession, str]:
    """The session in `session_dir`, and one line when what was passed differs from it."""
    session = TrainingSession.restore(session_dir)
    differ = []
    if parameters is not None:
        stored, asked = session.parameters.to_dict(), parameters.to_dict()
        differ = sorted(k for k in set(stored) | set(asked) if stored.get(k) != asked.get(k))
    other_data = data is not None and data.fingerprint() != session.data_fingerprint
    if not differ and not other_data:
        return session, ""
    what = " and ".join(filter(None, [
        f"parameters ({', '.join(differ[:3])}{', …' if len(differ) > 3 else ''})"
        if differ else "", "images" if other_data else ""]))
    return session, (f"Reopened the session in {session.directory}, with its own {what}: "
                     "the ones passed here differ. For a new session, pass a new session_dir.")


def _classes_in_turn(items: list[Any]) -> list[Any]:
    """Items reordered so that classes take turns (the first few show every class)."""
    by_class: dict[str, list[Any]] = {}
    for item in items:
        by_class.setdefault(item.label, []).append(item)
    rounds = zip_longest(*by_class.values())
    return [item for round_ in rounds for item in round_ if item is not None]
