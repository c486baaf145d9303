"""Smoke tests of the browser fixtures with plain ipywidgets and plotly (no mlwidgets UI).

They prove that widgets render, that browser events reach the kernel and back, and that a
FigureWidget updated from a kernel thread redraws in the page.
"""

from __future__ import annotations

from playwright.sync_api import Page, expect

CONTROLS = '''
import threading

import ipywidgets as widgets

slider = widgets.IntSlider(value=5, min=0, max=10, description="n")
button = widgets.Button(description="Click me")
label = widgets.Label("not clicked")
clicked = threading.Event()

def on_click(_):
    label.value = f"clicked with n={slider.value}"
    clicked.set()

button.on_click(on_click)
widgets.VBox([slider, button, label])
'''

CHART = '''
import plotly.graph_objects as go

fig = go.FigureWidget(go.Scatter(x=[0, 1, 2], y=[0, 1, 4], mode="markers"))
fig
'''

# Starts only once the button was clicked, so the test sees the chart before and after.
EXTEND_FROM_A_THREAD = '''
def extend():
    clicked.wait()
    for x in range(3, 8):  # five updates from a thread, as a training loop sends them
        with fig.batch_update():
            fig.data[0].x = (*fig.data[0].x, x)
            fig.data[0].y = (*fig.data[0].y, x * x)

threading.Thread(target=extend, daemon=True).start()
'''

POINTS = ".js-plotly-plot .scatterlayer .point"


def test_widgets_and_plotly_in_jupyterlab(lab, page: Page, console_errors, screenshot):
    lab.notebook("smoke.ipynb", [CONTROLS, CHART, EXTEND_FROM_A_THREAD])
    lab.open(page, "smoke.ipynb")
    lab.run_all(page)

    slider = page.locator(".widget-slider")
    expect(slider).to_be_visible()
    expect(page.locator(POINTS)).to_have_count(3)
    expect(page.get_by_text("Loading widget")).to_have_count(0)

    page.locator(".noUi-handle").focus()
    page.keyboard.press("ArrowRight")
    expect(page.locator(".widget-readout")).to_have_text("6")

    page.get_by_role("button", name="Click me").click()
    # n=6: the kernel saw the keyboard's change of the slider.
    expect(page.locator("div.widget-label")).to_have_text("clicked with n=6")

    expect(page.locator(POINTS)).to_have_count(8)
    assert screenshot(page, "lab-smoke").stat().st_size > 0
    assert console_errors == []


def test_button_in_voila(voila_server, write_notebook, tmp_path, page: Page, console_errors):
    notebook = write_notebook(tmp_path / "voila_smoke.ipynb", [CONTROLS, CHART])
    voila = voila_server(notebook)
    page.goto(voila.url)

    # Voilà executes the whole notebook before it shows anything.
    page.get_by_role("button", name="Click me").click(timeout=60_000)
    expect(page.locator("div.widget-label")).to_have_text("clicked with n=5")
    expect(page.locator(POINTS)).to_have_count(3)
    expect(page.get_by_text("Loading widget")).to_have_count(0)
    assert console_errors == []
