"""plotly's front-end bundle sent and parsed once per page, not once per chart.

A plotly FigureWidget is an anywidget whose `_esm` is plotly's whole 5 MB bundle: every chart
sends it over the websocket and the page parses it once for each chart, from its own blob
URL. anywidget gives a model 2 s to load and initialize (`[anywidget] Failed to initialize
model.` after that), and Voila creates every model of the page at once, so with the Studio's
five charts (eleven in the own-images tutorial) on a busy machine the later ones missed
the deadline and stopped following their figure (frozen after Train more).

Here each chart's `_esm` is the small LOADER below. The bundle's text travels once, in one
plain widget model (`bundle_carrier()`), and is imported once per page (kept on
`globalThis`); a chart's `initialize` returns at once, and once the bundle is there it asks
the kernel for its figure as it is then (`figure_now`), since changes sent meanwhile found no
listener; its `render` waits for that.
"""

from __future__ import annotations

import functools
from pathlib import Path

import ipywidgets as widgets
import traitlets

LOADER = """
const KEY = Symbol.for("mlwidgets.plotly-bundle/%(version)s");

function bundle(model) {  // imported once per page, whichever chart asks first
  globalThis[KEY] ??= (async () => {
    const ref = model.get("_mlwidgets_bundle");
    const carrier = await model.widget_manager.get_model(ref.replace("IPY_MODEL_", ""));
    const url = URL.createObjectURL(new Blob([carrier.get("value")],
                                             {type: "text/javascript"}));
    try { return await import(url); } finally { URL.revokeObjectURL(url); }
  })();
  return globalThis[KEY];
}

function hasWidth(el) {
  return new Promise((resolve) => {
    const observer = new ResizeObserver(() => {
      if (el.clientWidth > 0) {
        observer.disconnect();
        resolve();
      }
    });
    observer.observe(el);  // observed at once, and again as the box is laid out or shown
  });
}

export default () => {
  let ready;
  return {
    initialize(context) {  // at once: the 2 s anywidget allows never wait for the parse
      const model = context.model;
      ready = bundle(model).then((module) => new Promise((resolve) => {
        // Changes sent while the bundle loaded found no listener: start from the figure as
        // the kernel has it now (messages after this reply come after it, to listeners).
        const started = (message) => {
          if (message?.type !== "mlwidgets-figure") return;
          model.off("msg:custom", started);
          const now = {_widget_data: message.data, _widget_layout: message.layout};
          const seen = Object.assign(Object.create(model),
                                     {get: (key) => (key in now ? now[key] : model.get(key))});
          const widget = module.default();
          widget.initialize({...context, model: seen});
          resolve(widget);
        };
        model.on("msg:custom", started);
        model.send({type: "mlwidgets-figure"});
      }));
      ready.catch((error) => console.error("plotly chart failed to load:", error));
    },
    async render(context) {
      const widget = await ready;
      // plotly sizes a chart to its box once, when it draws it: one drawn in a hidden tab
      // (no width yet) stayed 700 px wide. So draw once the box has a width.
      await hasWidth(context.el);
      return widget.render(context);
    },
  };
};
"""


class BundleCarrier(widgets.Widget):
    """A plain widget model (never displayed) whose `value` is plotly's bundle."""

    value = traitlets.Unicode().tag(sync=True)


@functools.cache
def bundle_carrier() -> BundleCarrier:
    """This kernel's one carrier of plotly's bundle (made with the first chart)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "widgetbundle.js"
    return BundleCarrier(value=path.read_text(encoding="utf-8"))


def loader() -> str:
    import plotly

    return LOADER % {"version": plotly.__version__}


def figure_now(figure: object, content: object) -> None:
    """Answer a chart's "mlwidgets-figure" request with its data and layout as they are now."""
    if isinstance(content, dict) and content.get("type") == "mlwidgets-figure":
        state = figure.get_state(["_widget_data", "_widget_layout"])  # type: ignore[attr-defined]
        figure.send({"type": "mlwidgets-figure", "data": state["_widget_data"],  # type: ignore
                     "layout": state["_widget_layout"]})
