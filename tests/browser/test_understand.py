"""What changed and why, in a real browser: click a confusion cell, compare two
checkpoints, relabel an image among the possible problems, restart the kernel, and find
the decision kept. Its screenshots are the README's (MLWIDGETS_SCREENSHOTS=docs/screenshots)."""

from __future__ import annotations

import re

from playwright.sync_api import Locator, Page, expect

from .test_studio import button, open_tab

# small_cnn at 48 px: a 3x3 last map, so Grad-CAM draws a (coarse) heat map.
PARAMETERS = ('mw.ModelParameters(algorithm="from_scratch", architecture="small_cnn", '
              'image_size=48, max_iterations=6)')
NOTEBOOK = [
    "import mlwidgets as mw",
    'data = mw.datasets.shapes(images_per_class=30, classes=("circle", "square", "triangle"))\n'
    f'session = mw.TrainingSession.create(data, {PARAMETERS}, "understand-session")\n'
    "if not session.is_complete:\n    session.start().wait()",
    "studio = mw.Studio(session)\nstudio",
]
SCAN_MS = 120_000
_RESTART_JS = """async () => {
  const panel = window.jupyterapp.shell.currentWidget;
  await panel.sessionContext.session.kernel.restart();
}"""


def click_confusion_cell(panel: Locator, row: int, col: int, classes: int) -> None:
    """Click cell (row, col) of the confusion heat map (row 0 at the top)."""
    plot = panel.locator(".js-plotly-plot").filter(has_text="Validation confusion")
    plot.scroll_into_view_if_needed()
    area = plot.locator(".nsewdrag").first.bounding_box()
    plot.page.mouse.click(area["x"] + (col + 0.5) * area["width"] / classes,
                          area["y"] + (row + 0.5) * area["height"] / classes)


def test_drill_down_compare_relabel_and_restart(lab, page: Page, console_errors, screenshot):
    lab.notebook("understand.ipynb", NOTEBOOK)
    lab.open(page, "understand.ipynb")
    lab.run_all(page, timeout=240)
    studio = page.locator(".widget-tab")

    checkpoints = open_tab(studio, "Checkpoints")
    button(checkpoints, "Compare").click()
    expect(checkpoints.get_by_text(re.compile(r"compared with .*accuracy"))).to_be_visible()
    expect(checkpoints.get_by_text("Fixed (wrong before, right now)")).to_be_visible()
    screenshot(checkpoints.locator(".mlwidgets-insight"), "compare")
    click_confusion_cell(checkpoints, 0, 0, 3)
    expect(checkpoints.get_by_text("true circle, predicted circle", exact=True)).to_be_visible()
    checkpoints.locator(".mlwidgets-cell").get_by_role(
        "button", name=re.compile("where it looks")).first.click()
    expect(checkpoints.get_by_text(re.compile(r"Grad-CAM for \w+ \(p="))).to_be_visible()
    heat_map = checkpoints.locator(".mlwidgets-saliency img")
    expect(heat_map).to_be_visible()
    heat_map.evaluate("img => img.decode()")  # it arrives after its caption: wait till drawn
    screenshot(checkpoints.locator(".mlwidgets-cell"), "confusion-cell")
    screenshot(checkpoints.locator(".mlwidgets-saliency"), "saliency")
    # The map is pinned: moved along the timeline, it is redrawn where the slider rests.
    saliency = checkpoints.locator(".mlwidgets-saliency")
    pinned_at = re.search(r" at (\d+-\w+)", saliency.inner_text()).group(1)
    checkpoints.locator(".widget-hbox").filter(has=page.locator(".widget-hslider")).locator(
        ".noUi-handle").focus()
    for _ in range(3):
        page.keyboard.press("ArrowLeft")
    expect(saliency).not_to_contain_text(pinned_at)
    expect(saliency).to_contain_text(re.compile(r" at \d+-training"))
    screenshot(checkpoints, "saliency-followed")

    data = open_tab(studio, "Data")
    data.get_by_text("Possible problems", exact=True).click()
    button(data, "Find possible problems").click()
    expect(data.get_by_text(re.compile(r"possible label errors, \d+ duplicate"))).to_be_visible(
        timeout=SCAN_MS)
    data.locator(".widget-toggle-button", has_text="Outliers").click()
    first = data.locator("select").filter(has_text="relabel…").first
    first.select_option(index=1)
    expect(data.get_by_text(re.compile(r"^relabelled "))).to_be_visible()
    expect(data.get_by_text(re.compile(r"Decisions: 0 keep, 1 relabel, 0 exclude"))).to_be_visible()
    screenshot(data.locator(".mlwidgets-problems"), "problems")

    page.evaluate(_RESTART_JS)
    lab.run_all(page, timeout=240)
    studio = page.locator(".widget-tab")
    data = open_tab(studio, "Data")
    data.get_by_text("Possible problems", exact=True).click()
    expect(data.get_by_text(re.compile(r"Decisions: 0 keep, 1 relabel, 0 exclude"))).to_be_visible()
    assert console_errors == []
