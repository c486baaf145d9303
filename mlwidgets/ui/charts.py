"""Live loss and accuracy charts: they grow from session events, with checkpoint markers.

The whole history is kept; only what is drawn is downsampled, so a long run stays cheap to
redraw in the browser.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import ipywidgets as widgets

from ..events import EventType
from .common import COLOURS, figure, theme_style

MAX_POINTS = 400  # per line drawn; the stored history is never thinned
EMPTY_NOTE = "Press Start: the charts fill in as training runs."
# Until the first point: no axes (plotly's placeholder runs from -1 to 6), one short note.
_EMPTY_AXIS = {"visible": False, "rangemode": "nonnegative"}
_NOTE = {"text": EMPTY_NOTE, "showarrow": False, "xref": "paper", "yref": "paper",
         "x": 0.5, "y": 0.5, "font": {"size": 13}}
_LINES = {  # name: (chart, event metric or None for batch loss, legend, colour, dash)
    "batch_loss": ("loss", None, "training (batches)", "rgba(31,119,180,0.35)", "solid"),
    "train_loss": ("loss", "train_loss", "training", COLOURS["train"], "solid"),
    "valid_loss": ("loss", "valid_loss", "validation", COLOURS["valid"], "solid"),
    "train_accuracy": ("accuracy", "train_accuracy", "training", COLOURS["train"], "solid"),
    "valid_accuracy": ("accuracy", "valid_accuracy", "validation", COLOURS["valid"], "solid"),
}


def downsample(xs: list[float], ys: list[float], n: int = MAX_POINTS) -> tuple[list, list]:
    """At most `n` points: means of equal runs of points, the last point kept exactly."""
    if len(xs) <= n:
        return list(xs), list(ys)
    size = len(xs) / (n - 1)
    out_x, out_y = [], []
    for b in range(n - 1):
        lo, hi = int(b * size), max(int((b + 1) * size), int(b * size) + 1)
        out_x.append(sum(xs[lo:hi]) / (hi - lo))
        out_y.append(sum(ys[lo:hi]) / (hi - lo))
    out_x.append(xs[-1])
    out_y.append(ys[-1])
    return out_x, out_y


class TrainingCharts(widgets.VBox):
    """Loss and accuracy (training and validation) against optimizer steps."""

    def __init__(self) -> None:
        import plotly.graph_objects as go

        self.loss = figure("Loss", 260, xaxis={**_EMPTY_AXIS, "title": "step"},
                           yaxis=_EMPTY_AXIS, annotations=[_NOTE])
        self.accuracy = figure("Accuracy", 260, xaxis={**_EMPTY_AXIS, "title": "step"},
                               yaxis={**_EMPTY_AXIS, "range": [0, 1.02]}, annotations=[_NOTE])
        self.history: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in _LINES}
        self.checkpoints: list[dict[str, Any]] = []  # step, iteration, id
        self._traces: dict[str, Any] = {}
        for name, (chart, _, legend, colour, dash) in _LINES.items():
            fig = getattr(self, chart)
            fig.add_trace(go.Scatter(x=[], y=[], mode="lines", name=legend,
                                     line={"color": colour, "dash": dash, "width": 2}))
            self._traces[name] = fig.data[-1]
        for fig in (self.loss, self.accuracy):
            fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="checkpoint",
                                     marker={"symbol": "triangle-up", "size": 9,
                                             "color": COLOURS["checkpoint"]},
                                     yaxis="y", cliponaxis=False, hoverinfo="text"))
        self._markers = (self.loss.data[-1], self.accuracy.data[-1])
        self._dirty: set[str] = set()  # lines (and "checkpoints") changed since the last draw
        self.redraws = 0
        super().__init__([theme_style(), self.loss, self.accuracy],
                         layout=widgets.Layout(width="100%"))

    @property
    def points(self) -> int:
        """How many points the history holds (all lines and checkpoints)."""
        return sum(len(xs) for xs, _ in self.history.values()) + len(self.checkpoints)

    def add_events(self, events: Iterable[dict[str, Any]], redraw: bool = True) -> bool:
        """Take session events into the history; redraw once if any changed it."""
        changed = False
        for e in events:
            kind = e.get("type")
            if kind == EventType.BATCH and e.get("loss") is not None:
                self._append("batch_loss", e["step"], e["loss"])
                changed = True
            elif kind == EventType.REPORT:
                for name, (_, metric, *_rest) in _LINES.items():
                    value = (e.get("metrics") or {}).get(metric) if metric else None
                    if value is not None:
                        self._append(name, e["step"], value)
                        changed = True
            elif kind == EventType.CHECKPOINT:
                self.checkpoints.append({"step": e["step"], "iteration": e["iteration"],
                                         "id": e.get("id", ""), "phase": e.get("phase", "")})
                self._dirty.add("checkpoints")
                changed = True
        if changed and redraw:
            self.redraw()
        return changed

    def set_batch_losses(self, points: Iterable[tuple[float, float]]) -> None:
        """Start the batch line from a session's recorded (step, loss) points."""
        xs, ys = self.history["batch_loss"]
        xs[:], ys[:] = [], []
        for step, loss in points:
            xs.append(step)
            ys.append(loss)
        self._dirty.add("batch_loss")
        self.redraw()

    def _append(self, name: str, step: float, value: float) -> None:
        xs, ys = self.history[name]
        if xs and step < xs[-1]:  # a resumed run replays from an earlier checkpoint
            while xs and xs[-1] > step:
                xs.pop()
                ys.pop()
        xs.append(step)
        ys.append(value)
        self._dirty.add(name)

    def redraw(self, everything: bool = False) -> None:
        """Draw what changed (downsampled), in one message per chart that changed.

        Sending only changed lines keeps the follower's work small while training runs.
        """
        dirty, self._dirty = set(_LINES) | {"checkpoints"} if everything else self._dirty, set()
        for chart, fig, marker in (("loss", self.loss, self._markers[0]),
                                   ("accuracy", self.accuracy, self._markers[1])):
            lines = [n for n in dirty if n in _LINES and _LINES[n][0] == chart]
            if not lines and "checkpoints" not in dirty:
                continue
            with fig.batch_update():
                _show_axes(fig, self._last_step())
                for name in lines:
                    self._traces[name].x, self._traces[name].y = downsample(*self.history[name])
                if "checkpoints" in dirty:
                    marker.x = [c["step"] for c in self.checkpoints]
                    marker.y = [0] * len(self.checkpoints)
                    marker.hovertext = [f"{c['id']} · it {c['iteration']}"
                                        for c in self.checkpoints]
        self.redraws += 1

    def _last_step(self) -> float | None:
        steps = [xs[-1] for xs, _ in self.history.values() if xs]
        steps += [c["step"] for c in self.checkpoints[-1:]]
        return max(steps) if steps else None

    def clear(self) -> None:
        for xs, ys in self.history.values():
            xs.clear()
            ys.clear()
        self.checkpoints.clear()
        self.redraw(everything=True)


def integer_dtick(last: float, ticks: int = 6) -> int:
    """A tick spacing of 1, 2 or 5 times a power of ten giving about `ticks` ticks up to
    `last`: steps and iterations are whole numbers, so no tick reads 19.5."""
    raw, scale = max(last / ticks, 1.0), 1
    while True:
        for nice in (1, 2, 5):
            if nice * scale >= raw:
                return nice * scale
        scale *= 10


def _show_axes(fig: Any, last: float | None) -> None:
    """Axes with whole-number steps once there is a point; the empty look before."""
    shown = last is not None
    fig.layout.xaxis.visible = fig.layout.yaxis.visible = shown
    fig.layout.annotations = [] if shown else [_NOTE]
    if shown:
        fig.layout.xaxis.tick0, fig.layout.xaxis.dtick = 0, integer_dtick(last)
