"""Charts share one copy of plotly's front-end bundle (see ui/plotly_bundle.py): each chart
sends a small loader, and answers the loader's request for its figure as it is now."""

from __future__ import annotations

from mlwidgets.ui.charts import TrainingCharts
from mlwidgets.ui.plotly_bundle import bundle_carrier


def test_a_chart_sends_a_small_loader_and_the_bundle_travels_once():
    charts = TrainingCharts()
    states = [fig.get_state() for fig in (charts.loss, charts.accuracy)]
    assert all(len(state["_esm"]) < 10_000 for state in states)  # not plotly's 5 MB each
    carrier = bundle_carrier()
    assert {state["_mlwidgets_bundle"] for state in states} == {f"IPY_MODEL_{carrier.model_id}"}
    assert len(carrier.value) > 1_000_000 and "FigureModel" in carrier.value


def test_a_chart_answers_with_its_figure_as_it_is_now():
    charts = TrainingCharts()
    charts.add_events([{"type": "batch", "step": s, "loss": 1 / s, "phase": "training",
                        "time": 0.0, "iteration": 1} for s in range(1, 6)])
    sent = []
    charts.loss.send = lambda content, buffers=None: sent.append(content)
    charts.loss._handle_custom_msg({"type": "mlwidgets-figure"}, [])
    charts.loss._handle_custom_msg({"type": "something else"}, [])
    assert len(sent) == 1 and sent[0]["type"] == "mlwidgets-figure"
    batches = next(t for t in sent[0]["data"] if t["name"] == "training (batches)")
    assert list(batches["x"]) == [1, 2, 3, 4, 5]
    assert sent[0]["layout"]["xaxis"]["visible"] is True
