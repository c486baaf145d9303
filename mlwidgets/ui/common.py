"""What every panel shares: chart styling that reads well in light and dark themes,
status lines that show errors instead of dying, and small HTML helpers."""

from __future__ import annotations

import asyncio
import copy
import functools
import html
import logging
import sys
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ..images import thumbnail_png

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 96

# Transparent backgrounds; text takes the theme's own colour through THEME_CSS (plotly cannot
# read CSS variables, so the grey here is only what shows where that stylesheet is absent).
_GREY = "rgba(128, 128, 128, 0.9)"
_GRID = "rgba(128, 128, 128, 0.25)"
COLOURS = {"train": "#1f77b4", "valid": "#ff7f0e", "checkpoint": "#2ca02c", "best": "#d62728"}
CHART_CLASS = "mlwidgets-chart"
CHOICE_CLASS = "mlwidgets-choice"  # toggle buttons whose chosen button must stand out
# Plotly writes text colours as inline styles; `!important` lets the theme's variables win, so
# titles, ticks and legends read at >= 4.5:1 on JupyterLab's light and dark themes and Voila.
THEME_CSS = f"""<style>
.{CHART_CLASS} .main-svg text {{ fill: var(--jp-ui-font-color1, #1f1f1f) !important; }}
.{CHART_CLASS} .heatmaplayer text {{ fill: var(--jp-ui-font-color0, #000) !important; }}
.{CHART_CLASS} {{ width: 100%; }}
.{CHOICE_CLASS} .widget-toggle-button.mod-active {{
  background: var(--jp-brand-color0, #1976d2); color: #fff; font-weight: bold; }}
</style>"""
# The confusion matrix's one hue, from transparent to opaque: every tile is this blue over the
# page's own background, and its luminance (0.179) gives the theme's darkest or lightest text
# >= 4.5:1 on any tile, light theme or dark (no near-white tiles glaring on a dark page).
_TILE = "35,122,188"
TILE_SCALE = [[0.0, f"rgba({_TILE},0.06)"], [1.0, f"rgba({_TILE},1)"]]


def theme_style() -> widgets.HTML:
    """The stylesheet that gives charts (FigureWidgets with CHART_CLASS) the theme's text colour."""
    return widgets.HTML(THEME_CSS, layout=widgets.Layout(height="0px", margin="0"))


def chart_layout(title: str = "", height: int = 280, **overrides: Any) -> dict[str, Any]:
    axis = {"gridcolor": _GRID, "zerolinecolor": _GRID, "linecolor": _GRID}
    layout: dict[str, Any] = {
        "title": {"text": title, "font": {"size": 14}, "x": 0, "xanchor": "left",
                  "xref": "paper"},
        "height": height, "margin": {"l": 50, "r": 20, "t": 40 if title else 10, "b": 40},
        "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)",
        "font": {"color": _GREY}, "xaxis": dict(axis), "yaxis": dict(axis),
        # Above the plot, right: clear of the x axis title.
        "legend": {"orientation": "h", "x": 1, "xanchor": "right", "y": 1.0,
                   "yanchor": "bottom"},
    }
    for key, value in overrides.items():  # xaxis={"title": ...} must keep the axis styling
        both_dicts = isinstance(value, dict) and isinstance(layout.get(key), dict)
        layout[key] = {**layout[key], **value} if both_dicts else value
    return layout


def figure(title: str = "", height: int = 280, **layout: Any) -> Any:
    """An empty plotly FigureWidget styled for both themes."""
    fig = _figure_widget()(layout=chart_layout(title, height, **layout))
    fig.add_class(CHART_CLASS)
    return fig


@functools.cache
def _figure_widget() -> type:
    import plotly.graph_objects as go
    import traitlets

    from .plotly_bundle import bundle_carrier, figure_now, loader

    class FigureWidget(go.FigureWidget):
        """A FigureWidget that reports the figure as it is now when a frontend asks, and
        shares one copy of plotly's bundle with every other chart (see plotly_bundle.py).

        plotly refreshes the synced `_widget_data` / `_widget_layout` only when the figure
        itself is displayed; later changes travel as messages. A frontend that connects
        later (Voilà, a reloaded page) asks for the state and drew charts in panels empty.
        """

        _esm = loader()
        _mlwidgets_bundle = traitlets.Unicode().tag(sync=True)

        @traitlets.default("_mlwidgets_bundle")
        def _bundle_reference(self) -> str:
            return f"IPY_MODEL_{bundle_carrier().model_id}"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.on_msg(lambda _self, content, _buffers: figure_now(self, content))

        def get_state(self, key: Any = None, drop_defaults: bool = False) -> dict[str, Any]:
            state = super().get_state(key, drop_defaults)
            keys = self.keys if key is None else [key] if isinstance(key, str) else list(key)
            # None while BaseFigure.__init__ runs: ipywidgets opens the comm before it.
            now = {"_widget_data": getattr(self, "_data", None),
                   "_widget_layout": getattr(getattr(self, "_layout_obj", None), "_props", None)}
            for name, value in now.items():
                if value is not None and name in keys:
                    to_json = self.trait_metadata(name, "to_json", self._trait_to_json)
                    state[name] = to_json(copy.deepcopy(value), self)
            return state

    return FigureWidget


_CELL_HOVER = "true %{y}, predicted %{x}: %{z}<extra></extra>"


def confusion_heatmap(fig: Any, classes: list[str], matrix: list[list[int]] | None,
                      on_cell: Callable[[str, str], Any] | None = None) -> None:
    """Draw a confusion matrix (rows: true class, columns: predicted) into `fig`;
    clicking a cell calls `on_cell(true, predicted)`."""
    import plotly.graph_objects as go

    with fig.batch_update():
        fig.data = []
        if matrix is not None:
            fig.add_trace(go.Heatmap(z=matrix, x=classes, y=classes, colorscale=TILE_SCALE,
                                     text=matrix, texttemplate="%{text}", showscale=False,
                                     xgap=1, ygap=1,
                                     hovertemplate=_CELL_HOVER))
            if on_cell is not None:
                fig.data[0].on_click(clicked_cell(on_cell))
        fig.layout.xaxis.title = "predicted"
        fig.layout.yaxis.title = "true"
        fig.layout.yaxis.autorange = "reversed"


def clicked_cell(on_cell: Callable[[str, str], Any]) -> Callable[..., None]:
    """A plotly on_click handler calling `on_cell(true, predicted)` for a heat map cell."""
    def handler(_trace: Any, points: Any, _state: Any) -> None:
        if points.xs and points.ys:
            clicked(lambda: on_cell(str(points.ys[0]), str(points.xs[0])))(None)
    return handler


PHASE_NAMES = {"training": "", "fine_tuning": "fine-tune", "extracting_features": "features"}


def checkpoint_place(checkpoint: Any, short: bool = False, step: bool = False) -> str:
    """Where a checkpoint lies on the timeline, in the same words on every panel:
    'iteration 12' ('it 12' when `short`), after its phase when that is not training
    ('fine-tune it 3'), or 'paused at step 37' for a pause inside an iteration; `step`
    adds the step to an iteration."""
    c = checkpoint
    phase = PHASE_NAMES.get(c.phase, c.phase.replace("_", " "))
    if c.partial:
        where = f"paused at step {c.step_number}"
    else:
        where = f"{'it' if short else 'iteration'} {c.iteration}" + (
            f" (step {c.step_number})" if step else "")
    return f"{phase} {where}" if phase else where


def using_checkpoint(classifier: Any, best: bool = False) -> str:
    """HTML: which checkpoint a panel uses, in words ('checkpoint: iteration 5, best'); the
    checkpoint's id in a tooltip."""
    c = getattr(classifier, "checkpoint", None)
    if c is None:
        return ""
    text = f"Using checkpoint: {checkpoint_place(c)}{', best' if best else ''}"
    return f"<div title='{escape(c.id)}'>{message(text)}</div>"


def escape(value: Any) -> str:
    return html.escape(str(value))


def message(text: str, kind: str = "info") -> str:
    """HTML for a status line; kind is info, success or error."""
    colour = {"info": "var(--jp-ui-font-color2, #666)",
              "success": "var(--jp-success-color1, #2e7d32)",
              "error": "var(--jp-error-color1, #c62828)"}[kind]
    return f'<div style="color:{colour}; white-space:pre-wrap">{escape(text)}</div>'


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A small HTML table that follows the notebook theme."""
    head = "".join(f"<th style='text-align:left; padding:2px 8px'>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='padding:2px 8px'>{escape(c)}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f"<table style='border-collapse:collapse'><tr>{head}</tr>{body}</table>"


def reports_errors(status_attr: str = "status") -> Callable[[Callable], Callable]:
    """Make a widget action show its exception in the panel's status line, then re-raise.

    Button callbacks use `clicked(...)` instead, which shows the error and swallows it, so the
    widget stays alive; code calling the public method still gets the exception.
    """
    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except Exception as e:
                getattr(self, status_attr).value = message(f"{type(e).__name__}: {e}", "error")
                raise
        return run
    return wrap


def clicked(action: Callable[[], Any]) -> Callable[[Any], None]:
    """An on_click handler that runs `action` (a public method) and never kills the widget."""
    def handler(_button: Any) -> None:
        try:
            action()
        except Exception:  # already shown by @reports_errors; keep the kernel log complete
            log.debug("widget action failed", exc_info=True)
    return handler


def kernel_event_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop of the Jupyter kernel running this code, or None outside a kernel."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if getattr(shell, "kernel", None) is None:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # a kernel thread other than the one its loop runs in
        return None


class Debounced:
    """Run `action` once its calls pause for `delay` seconds: a dragged slider sends a value
    per step, and each redraw may run a network (a pinned saliency map, say).

    In a Jupyter kernel (JupyterLab, Voilà) only the last call of a burst runs, on the
    kernel's event loop; anywhere else (a script, a test calling the public methods) every
    call runs at once, even where some library left an event loop marked running."""

    def __init__(self, action: Callable[..., Any], delay: float = 0.25):
        self.action, self.delay = action, delay
        self._pending: asyncio.TimerHandle | None = None

    def __call__(self, *args: Any) -> None:
        loop = kernel_event_loop()
        if loop is None:
            self.action(*args)
            return
        if self._pending is not None:
            self._pending.cancel()
        self._pending = loop.call_later(self.delay, self._run, args)

    def _run(self, args: tuple[Any, ...]) -> None:
        self._pending = None
        try:
            self.action(*args)
        except Exception:  # shown by the action's @reports_errors; no loop traceback
            log.debug("debounced widget action failed", exc_info=True)


def button(description: str, action: Callable[[], Any], icon: str = "",
           style: str = "", tooltip: str = "") -> widgets.Button:
    b = widgets.Button(description=description, icon=icon, button_style=style,
                       tooltip=tooltip or description)
    b.on_click(clicked(action))
    return b


def thumbnail_or_reason(source: Any) -> tuple[bytes | None, str]:
    """A PNG thumbnail of `source`, or None and why it cannot be made."""
    try:
        return thumbnail_png(source, THUMBNAIL_SIZE), ""
    except Exception as e:  # a file deleted or corrupted since it was listed: say so, go on
        return None, str(e)


def thumbnail_card(png: bytes | None, caption: list[str], tooltip: str = "",
                   width: int = THUMBNAIL_SIZE, problem: str = "") -> widgets.VBox:
    """A thumbnail with caption lines under it; without one, `problem` says why."""
    size = THUMBNAIL_SIZE
    picture: widgets.Widget
    if png is None:
        picture = widgets.HTML(message(f"cannot show: {problem}", "error"),
                               layout=widgets.Layout(width=f"{width}px", height=f"{size}px",
                                                     overflow="hidden"))
    else:
        picture = widgets.Image(value=png, format="png", layout=widgets.Layout(
            width=f"{size}px", height=f"{size}px", object_fit="contain"))
    lines = "<br>".join(escape(line) for line in caption)
    label = widgets.HTML(f"<div title='{escape(tooltip)}' style='font-size:11px; line-height:1.3;"
                         f" overflow-wrap:anywhere; width:{width}px'>{lines}</div>")
    return widgets.VBox([picture, label], layout=widgets.Layout(width=f"{width + 4}px"))


def card_grid(width: int = THUMBNAIL_SIZE) -> widgets.GridBox:
    """An empty grid that wraps cards of `width` pixels to the panel's width."""
    return widgets.GridBox(layout=widgets.Layout(
        grid_template_columns=f"repeat(auto-fill, {width + 8}px)", grid_gap="8px"))
