"""The Studio in a real browser: what a newcomer does in JupyterLab, the dark theme, Voilà.

The first test walks every tab the way a person would (train, scrub, restore, export and
download, evaluate, predict) and saves one screenshot per tab; the README shows those
(`MLWIDGETS_SCREENSHOTS=docs/screenshots pytest tests/browser/test_studio.py`).
"""

from __future__ import annotations

import re
import shutil
from urllib.parse import urljoin

from playwright.sync_api import Locator, Page, expect

DATA = 'data = mw.datasets.shapes(images_per_class=30, classes=("circle", "square", "triangle"))'
# Long enough that the chart is seen growing at the follower's pace (twice a second)
# even when the decoded-image cache makes each iteration take a fraction of a second.
ITERATIONS = 12
# A small CNN from scratch in batches of 4 (18 steps an iteration): the run lasts several
# seconds on 2 cores, so the chart is seen growing (in batches of 32 it lasts about 1.5 s,
# and the classifier on extracted features trains 12 iterations in a fraction of a second).
PARAMETERS = (f'mw.ModelParameters(algorithm="from_scratch", architecture="small_cnn", '
              f'image_size=48, batch_size=4, max_iterations={ITERATIONS})')
NEWCOMER = [
    "import mlwidgets as mw",
    DATA,
    f'studio = mw.Studio(data, {PARAMETERS}, session_dir="session")\nstudio',
]
# Trains before the Studio is shown, as when a notebook is reopened on a finished session.
TRAINED = [
    "import mlwidgets as mw",
    f'{DATA}\nsession = mw.TrainingSession.create(data, {PARAMETERS}, "dark-session")\n'
    "session.start().wait()",
    'studio = mw.Studio("dark-session")\nstudio',
]
# Training on 2 cores takes about 10 s; exporting and verifying about 10 s.
TRAINING_MS = 90_000
EXPORT_MS = 60_000

# The loss chart's drawn points (plotly's graph div holds the data it drew), and the
# dashboard's progress line. Used while training runs, so it must not throw.
_LOSS_AND_PROGRESS_JS = """(panel) => {
  const loss = [...panel.querySelectorAll('.js-plotly-plot')]
    .find(plot => plot.querySelector('.gtitle')?.textContent === 'Loss');
  const lines = (loss?.data ?? []).filter(trace => trace.mode === 'lines');
  const points = lines.reduce((n, trace) => n + (trace.x?.length ?? 0), 0);
  const paths = loss ? loss.querySelectorAll('.scatterlayer .trace path.js-line').length : 0;
  const progress = [...panel.querySelectorAll('.widget-html-content')]
    .map(el => el.textContent).find(text => / · iteration \\d+\\/\\d+/.test(text)) ?? '';
  return {points, paths, progress};
}"""

# Resolves once the loss chart was seen with two different, growing point counts while the
# progress line said "running": the chart follows the training thread live.
_GROWS_WHILE_RUNNING_JS = f"""(panel) => {{
  const now = ({_LOSS_AND_PROGRESS_JS})(panel);
  const seen = (window.__lossPointsWhileRunning ??= []);
  if (now.progress.startsWith('running') && now.points > (seen.at(-1) ?? 0)) {{
    seen.push(now.points);
  }}
  return seen.length >= 2 ? seen : null;
}}"""


def shown_tab(studio: Locator) -> Locator:
    """The Studio's visible tab panel (the others stay in the DOM, hidden)."""
    return studio.locator(".widget-tab-contents > .lm-Widget").filter(visible=True)


def button(panel: Locator, name: str) -> Locator:
    """The button labelled `name` (its accessible name starts with the icon's glyph)."""
    return panel.get_by_role("button", name=re.compile(rf"^\W*{re.escape(name)}$"))


def open_tab(studio: Locator, title: str) -> Locator:
    studio.get_by_role("tab", name=title, exact=True).click()
    expect(studio.get_by_role("tab", name=title, exact=True)).to_have_attribute(
        "aria-selected", "true")
    return shown_tab(studio)


def test_a_newcomer_trains_restores_exports_and_predicts(lab, page: Page, console_errors,
                                                         screenshot):
    lab.notebook("studio.ipynb", NEWCOMER)
    lab.open(page, "studio.ipynb")
    lab.run_all(page)
    studio = page.locator(".widget-tab")
    expect(studio).to_be_visible()
    expect(page.get_by_text("Loading widget")).to_have_count(0)

    data = shown_tab(studio)
    expect(data.get_by_text("90 images in 3 classes")).to_be_visible()
    expect(data.locator(".js-plotly-plot .barlayer .point")).to_have_count(6)  # 3 classes x 2
    expect(data.locator(".widget-image")).to_have_count(12)  # the first page of thumbnails
    screenshot(studio, "data")

    train = open_tab(studio, "Train")
    button(train, "Start").click()
    grew = page.wait_for_function(_GROWS_WHILE_RUNNING_JS, arg=train.element_handle(),
                                  polling=100, timeout=TRAINING_MS).json_value()
    assert grew[0] < grew[1], grew
    expect(train.get_by_text(re.compile(
        rf"^completed · done · iteration {ITERATIONS}/{ITERATIONS}"))).to_be_visible(
        timeout=TRAINING_MS)
    final = train.evaluate(_LOSS_AND_PROGRESS_JS)
    assert final["points"] > grew[-1] and final["paths"] >= 3, final
    # One checkpoint marker per iteration.
    expect(train.locator(".js-plotly-plot").nth(0).locator(".scatterlayer .point")).to_have_count(
        ITERATIONS)
    expect(button(train, "Train more")).to_be_enabled()
    screenshot(studio, "train")

    checkpoints = open_tab(studio, "Checkpoints")
    slider_row = checkpoints.locator(".widget-hbox").filter(has=page.locator(".widget-hslider"))
    label = slider_row.locator(".widget-html-content")
    expect(label).to_have_text(re.compile(rf"^it {ITERATIONS} · "))
    slider_row.locator(".noUi-handle").focus()
    page.keyboard.press("ArrowLeft")
    before = ITERATIONS - 1
    expect(label).to_have_text(re.compile(rf"^it {before} · "))
    expect(checkpoints.get_by_text(re.compile(
        rf"^\d+-training · training · iteration {before} · "))).to_be_visible()
    button(checkpoints, "Restore").click()
    expect(checkpoints.get_by_text(re.compile(
        rf"^Restored it {before} · .*: Evaluate and Preview now use it"))).to_be_visible(
        timeout=30_000)

    checkpoints.locator(".jupyter-widget-Collapse-header", has_text="Export to Core ML").click()
    button(checkpoints, "Export to Core ML").click()
    link = checkpoints.locator("a.mlwidgets-filelink")
    expect(link).to_have_text(re.compile(r"^Download .*\.mlpackage\.zip \("), timeout=EXPORT_MS)
    expect(checkpoints.get_by_text(re.compile(r"^Verified against PyTorch: .* top-1 agreement "
                                              r"100\.0%"))).to_be_visible()
    href = link.get_attribute("href")
    assert href and href.endswith(".mlpackage.zip") and link.get_attribute("download"), href
    # As a click on the link would: the page's cookies (the token login) authorize it, and the
    # Referer is required (Jupyter Server blocks cookie-authenticated requests without one).
    response = page.request.get(urljoin(page.url, href), headers={"Referer": page.url})
    assert response.status == 200, (response.status, href)
    assert response.body()[:2] == b"PK"  # a zip archive of the .mlpackage
    screenshot(studio, "checkpoints")

    evaluate = open_tab(studio, "Evaluate")
    button(evaluate, "Evaluate").click()
    expect(evaluate.get_by_text(re.compile(r"^Evaluated 18 images\."))).to_be_visible(
        timeout=30_000)
    table = evaluate.locator("table").filter(has_text="precision")
    expect(table.locator("tr")).to_have_count(4)  # the header and one row per class
    expect(evaluate.locator(".js-plotly-plot .heatmaplayer")).to_have_count(1)
    screenshot(studio, "evaluate")

    preview = open_tab(studio, "Preview")
    button(preview, "Predict 6 validation images").click()
    expect(preview.get_by_text("Predicted 6 images.")).to_be_visible(timeout=30_000)
    # Three bars (the most probable classes) per image; the first is the widest.
    bars = preview.locator(".widget-html-content span[style*='display:block']")
    expect(bars).to_have_count(18)
    widths = bars.evaluate_all("bars => bars.map(bar => bar.getBoundingClientRect().width)")
    assert all(widths[k] >= widths[k + 1] >= widths[k + 2] for k in range(0, 18, 3)), widths
    assert widths[0] > 0
    screenshot(studio, "preview")
    assert console_errors == []


# For each chart: the colour under it (the nearest ancestor with a background), its own
# backgrounds, its title's and tick labels' text colours, and its grid lines' colours.
_CHART_COLOURS_JS = """(panel) => [...panel.querySelectorAll('.js-plotly-plot')].map(plot => {
  let under = plot;
  while (under && ['rgba(0, 0, 0, 0)', 'transparent']
         .includes(getComputedStyle(under).backgroundColor)) under = under.parentElement;
  const paint = el => {
    const style = getComputedStyle(el);
    return {fill: style.fill, opacity: Number(style.fillOpacity) * Number(style.opacity)};
  };
  return {
    under: under ? getComputedStyle(under).backgroundColor : 'rgb(255, 255, 255)',
    paper: getComputedStyle(plot.querySelector('.main-svg')).backgroundColor,
    plot: paint(plot.querySelector('rect.bg')),
    text: [...plot.querySelectorAll('.gtitle, .xtick text, .ytick text')].map(paint),
    grid: [...plot.querySelectorAll('.gridlayer path')].map(el => {
      const style = getComputedStyle(el);
      return {fill: style.stroke, opacity: Number(style.strokeOpacity) * Number(style.opacity)};
    }),
  };
})"""


def rgba(css: str) -> tuple[float, float, float, float]:
    """'rgb(1, 2, 3)' or 'rgba(1, 2, 3, 0.5)' as numbers (alpha 1 when not given)."""
    numbers = [float(n) for n in re.findall(r"[\d.]+", css)]
    assert len(numbers) in (3, 4), css
    return (*numbers[:3], numbers[3] if len(numbers) == 4 else 1.0)


def luminance(rgb: tuple[float, ...]) -> float:
    """WCAG relative luminance of an sRGB colour (0-255 channels)."""
    def linear(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (linear(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(text: dict, background: tuple[float, ...]) -> float:
    """WCAG contrast of text painted with `text` (fill, opacity) over `background`."""
    *rgb, alpha = rgba(text["fill"])
    alpha *= text["opacity"]
    seen = [alpha * c + (1 - alpha) * b for c, b in zip(rgb, background)]
    lighter, darker = sorted((luminance(seen), luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def test_the_studio_reads_well_in_the_dark_theme(lab, page: Page, console_errors, screenshot):
    lab.notebook("dark.ipynb", TRAINED)
    lab.open(page, "dark.ipynb")
    lab.run_all(page)
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', "
                  "{theme: 'JupyterLab Dark'})")
    expect(page.locator('body[data-jp-theme-light="false"]')).to_have_count(1)
    studio = page.locator(".widget-tab")
    expect(page.get_by_text("Loading widget")).to_have_count(0)

    train = open_tab(studio, "Train")
    expect(train.get_by_text(re.compile(
        rf"^completed · done · iteration {ITERATIONS}/{ITERATIONS}"))).to_be_visible()
    expect(train.locator(".js-plotly-plot .scatterlayer .trace path.js-line")).not_to_have_count(0)
    charts = train.evaluate(_CHART_COLOURS_JS)
    assert len(charts) == 2, charts
    for chart in charts:
        # Transparent chart backgrounds: the theme's own (dark) background shows through.
        assert rgba(chart["paper"])[3] == 0, chart
        assert rgba(chart["plot"]["fill"])[3] * chart["plot"]["opacity"] == 0, chart
        under = rgba(chart["under"])
        assert luminance(under) < 0.05, f"not a dark background: {chart['under']}"
        # WCAG's minimum contrast for large text and graphics (the grey text must also read
        # on the light theme's white, which rules out the 4.5 of body text on both).
        assert chart["text"] and min(contrast(t, under) for t in chart["text"]) >= 3, chart
        # Grid lines stay faint (plotly's default template draws them opaque white).
        assert chart["grid"] and max(contrast(g, under) for g in chart["grid"]) < 1.5, chart
    screenshot(studio, "train-dark")
    assert console_errors == []


def test_the_studio_in_voila(voila_server, trained_dir, tmp_path, write_notebook, page: Page,
                             console_errors):
    shutil.copytree(trained_dir, tmp_path / "session")
    notebook = write_notebook(tmp_path / "studio.ipynb",
                              ['import mlwidgets as mw\nmw.Studio("session")'])
    voila = voila_server(notebook)
    page.goto(voila.url)

    studio = page.locator(".widget-tab")
    expect(studio).to_be_visible(timeout=90_000)  # Voilà runs the notebook before it shows it
    expect(studio.get_by_role("tab")).to_have_text(
        ["Data", "Train", "Checkpoints", "Evaluate", "Preview"])
    summary = studio.get_by_text(re.compile(r"^\d+ images in 3 classes"))
    expect(summary).to_be_visible()
    # Voilà asks for the widgets' state after the notebook ran: charts filled in after they
    # were made must still come up drawn (3 classes x training and validation bars).
    expect(shown_tab(studio).locator(".barlayer .point")).to_have_count(6)
    train = open_tab(studio, "Train")
    expect(summary).to_be_hidden()
    expect(train.get_by_text(re.compile(r"^completed · done · iteration 3/3"))).to_be_visible()
    # Training and validation lines of both charts, the batch line the session recorded, and
    # a marker per checkpoint on each chart.
    expect(train.locator(".scatterlayer .trace path.js-line")).to_have_count(5)
    expect(train.locator(".scatterlayer .point")).to_have_count(6)
    checkpoints = open_tab(studio, "Checkpoints")
    expect(checkpoints.locator(".noUi-handle")).to_be_visible()
    expect(button(checkpoints, "Restore")).to_be_enabled()
    expect(checkpoints.locator(".heatmaplayer image")).to_have_count(1)
    expect(page.get_by_text("Loading widget")).to_have_count(0)
    assert console_errors == []
