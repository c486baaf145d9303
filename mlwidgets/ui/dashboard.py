"""The Train tab: parameters, Start / Pause / Resume / Stop / Train N more, a progress
line, and live charts that follow the session, whoever trains it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from ..data import DataSource
from ..events import EventType, Observers, RunState
from ..follow import SessionFollower
from ..parameters import ModelParameters
from ..process_job import ProcessJob
from ..session import TrainingSession
from .charts import TrainingCharts
from .common import button, message, reports_errors
from .parameters import ParameterForm

Listener = Callable[[list[dict[str, Any]]], None]
# Why a button is greyed out, by button (the others: "not while the session is <state>").
_WHY_NOT = {"start": "this session has started already: Resume or Train more continues it",
            "pause": "nothing is training now", "stop": "nothing is training now",
            "resume": "only a paused, stopped or failed run resumes",
            "more": "Train more continues a finished, paused or stopped session"}
# Each button's action, as RunState names them.
_ACTIONS = {"start": "start", "pause": "pause", "resume": "resume", "stop": "stop",
            "more": "train_more"}


class TrainingDashboard(widgets.VBox):
    """Train a DataSource in a new session, or follow and continue a TrainingSession."""

    def __init__(self, source: DataSource | TrainingSession,
                 parameters: ModelParameters | None = None,
                 session_dir: str | Path | None = None, follow_interval: float = 0.5,
                 runner: str = "thread"):
        is_session = isinstance(source, TrainingSession)
        self.session: TrainingSession | None = source if is_session else None
        self.data: DataSource | None = None if is_session else source
        self.session_dir = session_dir
        self.follow_interval = follow_interval
        self.follower: SessionFollower | None = None
        # The engine's one observer policy: a failing listener is logged, the others still run.
        self._listeners = Observers()
        self._session_listeners = Observers()
        self.form = ParameterForm(self.session.parameters if is_session else parameters)
        self.more = widgets.BoundedIntText(value=5, min=1, max=10_000, layout={"width": "70px"})
        self.buttons = {
            "start": button("Start", self.start, "play", "success"),
            "pause": button("Pause", self.pause, "pause",
                            tooltip="stop at the next batch and commit a checkpoint"),
            "resume": button("Resume", self.resume, "play"),
            "stop": button("Stop", self.stop, "stop", "danger",
                           tooltip="stop at the next batch; committed checkpoints stay"),
            "more": button("Train more", lambda: self.train_more(), "plus",
                           tooltip="raise the iteration budget by this many and continue"),
        }
        self.progress_bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0,
                                                  layout={"width": "100%"})
        self.progress_text = widgets.HTML()
        self.status = widgets.HTML()
        self.charts = TrainingCharts()
        self._tooltips = {name: b.tooltip for name, b in self.buttons.items()}
        self.runner = widgets.ToggleButtons(
            options=[("this kernel", "thread"), ("a separate process", "process")],
            value=runner, description="Run in", style={"button_width": "auto"},
            tooltips=["a thread of this notebook's kernel: starts at once",
                      "a child process that keeps training if the kernel restarts; "
                      "the Studio follows it through the session folder"])
        controls = widgets.HBox([*(self.buttons[k] for k in ("start", "pause", "resume", "stop",
                                                              "more")), self.more])
        super().__init__([self.form, self.runner, controls, self.progress_bar,
                          self.progress_text,
                          self.status, self.charts])
        if self.session is not None:
            self._attach()
        self._show_state()

    # -- the buttons' actions ----------------------------------------------------------

    @reports_errors()
    def start(self) -> None:
        """Make the session from the form's parameters (first time) and start training."""
        if self.session is None:
            try:
                self.session = TrainingSession.create(self.data, self.form.parameters,
                                                      self.session_dir)
            except FileExistsError as e:  # name the fix in the widgets' own terms
                raise FileExistsError(f"{e}. In the widgets, mw.Studio({str(self.session_dir)!r})"
                                      " reopens that session as it is") from e
            self._attach()
            self._session_listeners.dispatch(self.session)
        self.session.start(self.runner.value)
        self._started()

    @reports_errors()
    def pause(self) -> None:
        """Ask training to stop at the next batch with a checkpoint (returns at once)."""
        self._require_session().pause(wait=False)
        self.status.value = message("Pausing: committing a checkpoint…")

    @reports_errors()
    def resume(self) -> None:
        """Continue from the latest checkpoint."""
        self._require_session().resume(runner=self.runner.value)
        self._started()

    @reports_errors()
    def stop(self) -> None:
        """Stop at the next batch without a new checkpoint (returns at once)."""
        self._require_session().cancel(wait=False)
        self.status.value = message("Stopping…")

    @reports_errors()
    def train_more(self, iterations: int | None = None) -> None:
        """Raise the iteration budget by `iterations` (the box's value) and continue."""
        self._require_session().train_more(
            iterations if iterations is not None else self.more.value, self.runner.value)
        self._started()

    # -- following ------------------------------------------------------------------------

    def on_events(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(events)` with each batch of session events this dashboard shows;
        returns a function that unsubscribes. A failing listener never stops the others."""
        return self._listeners.subscribe(listener)

    def on_session(self, listener: Callable[[TrainingSession], None]) -> Callable[[], None]:
        """Call `listener(session)` when Start makes the session."""
        return self._session_listeners.subscribe(listener)

    def poll(self) -> list[dict[str, Any]]:
        """Show the events that arrived since the last poll (the follower calls this)."""
        if self.follower is None:
            return []
        events = self.follower.poll()
        if events:
            self._show(events)
        return events

    def close(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        super().close()

    def _attach(self) -> None:
        self.form.set_enabled(False)
        self.follower = SessionFollower(self.session)
        # The batch line as the session recorded it (thinned); live batches continue it.
        self.charts.set_batch_losses(self.session.batch_losses)
        self.poll()  # the history so far, drawn once
        self.follower.start(self._show, self.follow_interval)

    def _show(self, events: list[dict[str, Any]]) -> None:
        self.charts.add_events(events)
        states = [e for e in events if e["type"] == EventType.STATE]
        if states:  # the latest state says it all: an old error never outlives it
            last = states[-1]
            if last.get("error"):
                self.status.value = message(f"Training failed: {last['error']}", "error")
            elif last.get("note"):
                self.status.value = message(last["note"])
            elif last["state"] == RunState.PAUSING:
                self.status.value = message("Pausing: committing a checkpoint…")
            else:
                self.status.value = ""
        preparing = [e for e in events if e["type"] == EventType.PROGRESS]
        self._show_state(preparing[-1] if preparing and events[-1]["type"] != EventType.STATE
                         else None)
        self._listeners.dispatch(events)

    def _started(self) -> None:
        self.status.value = ""
        self._show_state()
        if self.session.progress.phase == "initialized":  # the first event is a moment away
            self.progress_text.value = message(
                f"{self.shown_state} · preparing: decoding images…")

    def _show_state(self, preparing: dict[str, Any] | None = None) -> None:
        s = self.session
        state = self.shown_state = s.state if s is not None else RunState.INITIALIZED
        elsewhere = state.is_active and not s.trains_here
        for name, b in self.buttons.items():  # the state says which actions make sense
            b.disabled = not state.allows(_ACTIONS[name])
            b.tooltip = (_WHY_NOT.get(name, "not while the session is {state}").format(
                state=state) if b.disabled else self._tooltips[name])
        self.more.disabled = self.buttons["more"].disabled
        self.more.tooltip = self.buttons["more"].tooltip
        if state is not RunState.FAILED and "jp-error-color1" in self.status.value:
            self.status.value = ""  # an error from an earlier run never outlives it
        if s is None:
            self.progress_text.value = message("Set the parameters, then press Start.")
            return
        self.runner.disabled = state.is_active
        if isinstance(s.job, ProcessJob) and state in (RunState.FAILED, RunState.INTERRUPTED):
            self.status.value = message(f"The training process stopped: {s.job.error}", "error")
        self.form.show_budget(s.iterations)
        p = s.progress
        self.progress_bar.value = p.fraction_completed
        self.progress_bar.bar_style = {RunState.COMPLETED: "success",
                                       RunState.FAILED: "danger"}.get(state, "")
        left = f" · about {p.remaining:.0f} s left" if p.remaining is not None else ""
        where = " (trained by another process)" if elsewhere else ""
        if preparing is not None:  # decoding images or extracting features: no iteration yet
            left = f" · {preparing['task']} {preparing['done']}/{preparing['total']}"
        self.progress_text.value = message(
            f"{state}{where} · {p.phase.replace('_', ' ')} · iteration {p.iteration}/"
            f"{p.total_iterations} · step {p.step} · {p.elapsed:.1f} s{left}")

    def _require_session(self) -> TrainingSession:
        if self.session is None:
            raise ValueError("no session yet: press Start to create one")
        return self.session
