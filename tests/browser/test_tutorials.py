"""The tutorials on the paths newcomers take: Run All, a click during training, a kernel
restart, Voilà, the dark theme.

01-quickstart and 04-your-own-images are apps: no cell waits for training, so Run All ends
while training runs and every button answers at once, in JupyterLab and in Voilà. They run
here with small budgets, as tests/test_notebooks.py runs them (JupyterLab's kernels do not
see this process's environment, so the copy's parameter cell gets the budgets as defaults).
Every wait is on something seen in the page (Playwright's `expect`), never a fixed sleep.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import Locator, Page, expect

from .test_studio import button, contrast, luminance, open_tab, rgba, shown_tab

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
TRAINING_MS = 240_000
# Enough images (the tutorial's own default) that feature extraction outlasts the rest of
# Run All (cells that only check whether training is done) by a wide margin, so the Pause
# click lands while training runs even on a faster machine; few enough iterations to keep
# the test within a few minutes.
RUN_ALL_BUDGET = {"MLWIDGETS_TUTORIAL_ITERATIONS": 6, "MLWIDGETS_TUTORIAL_IMAGES": 60}
VOILA_BUDGET = {"MLWIDGETS_TUTORIAL_ITERATIONS": 3, "MLWIDGETS_TUTORIAL_IMAGES": 8}

# The loss chart's lines (plotly's graph div holds what it drew) and the plot's width
# against the tab's.
_LOSS_CHART_JS = """(panel) => {
  const plots = [...panel.querySelectorAll('.js-plotly-plot')];
  const loss = plots.find(plot => plot.querySelector('.gtitle')?.textContent === 'Loss');
  if (!loss) return null;
  const lines = Object.fromEntries((loss.data ?? []).filter(t => t.mode === 'lines')
    .map(t => [t.name, {n: t.x?.length ?? 0, last: t.x?.length ? t.x[t.x.length - 1] : null}]));
  const xticks = [...loss.querySelectorAll('.xtick text')].map(t => t.textContent);
  const yticks = [...loss.querySelectorAll('.ytick text')].map(t => t.textContent);
  const svg = loss.querySelector('.main-svg').getBoundingClientRect().width;
  return {lines, xticks, yticks, width: svg, tab: panel.getBoundingClientRect().width};
}"""

# Every text a chart draws (titles, ticks, legends, notes) with the colour it is painted in.
_CHART_TEXT_JS = """(panel) => [...panel.querySelectorAll('.js-plotly-plot')].map(plot => {
  let under = plot;
  while (under && ['rgba(0, 0, 0, 0)', 'transparent']
         .includes(getComputedStyle(under).backgroundColor)) under = under.parentElement;
  return {
    under: under ? getComputedStyle(under).backgroundColor : 'rgb(255, 255, 255)',
    text: [...plot.querySelectorAll('.main-svg text')]
      .filter(el => el.textContent.trim() && el.getBoundingClientRect().width > 0)
      .map(el => {
        const style = getComputedStyle(el);
        return {text: el.textContent, fill: style.fill,
                opacity: Number(style.fillOpacity) * Number(style.opacity)};
      }),
  };
})"""


def tutorial(name: str, folder: Path, budget: dict[str, int]) -> Path:
    """A copy of notebooks/NAME in `folder`, its parameter cell defaulting to `budget`."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    for variable, value in budget.items():
        cell.source, n = re.subn(rf'(os\.environ\.get\("{variable}", )\d+\)', rf"\g<1>{value})",
                                 cell.source)
        assert n <= 1, (name, variable)
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / name)
    return folder / name


def loss_chart(panel: Locator) -> dict:
    return panel.evaluate(_LOSS_CHART_JS)


def assert_charts_look_finished(train: Locator) -> None:
    chart = loss_chart(train)
    assert chart["width"] >= 0.95 * chart["tab"], chart  # fills the tab
    assert chart["xticks"] and all(re.fullmatch(r"[\d,]+", t) for t in chart["xticks"]), chart
    assert not any(t.startswith(("−", "-")) for t in chart["yticks"]), chart  # no negative axis
    assert chart["lines"]["training (batches)"]["n"] > 0, chart


def assert_text_reads(panel: Locator, dark: bool) -> float:
    """Every chart text at >= 4.5:1 (WCAG AA) against what is under the chart."""
    worst = 99.0
    for chart in panel.evaluate(_CHART_TEXT_JS):
        under = rgba(chart["under"])
        assert (luminance(under) < 0.05) == dark, chart["under"]
        for text in chart["text"]:
            worst = min(worst, contrast(text, under))
            assert contrast(text, under) >= 4.5, (text, chart["under"])
    return worst


def run_cell(page: Page, index: int) -> None:
    """Run code cell `index` of the open notebook alone, as Shift+Enter would."""
    page.evaluate("""async ([index]) => {
      const panel = window.jupyterapp.shell.currentWidget;
      const code = panel.content.widgets.filter(cell => cell.model.type === 'code');
      panel.content.activeCellIndex = panel.content.widgets.indexOf(code[index]);
      await window.jupyterapp.commands.execute('notebook:run-cell');
    }""", [index])


@pytest.mark.timeout(900)
def test_quickstart_run_all_pause_at_once_restart_and_dark_theme(lab, page: Page, console_errors,
                                                                screenshot):
    tutorial("01-quickstart.ipynb", lab.root, RUN_ALL_BUDGET)
    lab.open(page, "01-quickstart.ipynb")
    started = time.monotonic()
    lab.run_all(page, timeout=240)  # returns although training goes on: no cell waits
    print(f"Run All of 01: {time.monotonic() - started:.1f} s")
    studio = page.locator(".widget-tab")
    expect(studio).to_have_count(1)
    train = shown_tab(studio)  # the notebook showed the Train tab
    expect(train.get_by_text(re.compile(r"^running · "))).to_be_visible()
    # The app's later cells said to come back, instead of waiting.
    expect(page.get_by_text(re.compile(r"run this cell again to export once"))).to_be_visible()

    clicked = time.monotonic()
    button(train, "Pause").click()
    expect(train.get_by_text(re.compile(r"^(pausing|paused) · "))).to_be_visible(timeout=60_000)
    print(f"Pause click to its effect during Run All's training: "
          f"{time.monotonic() - clicked:.2f} s")
    expect(train.get_by_text(re.compile(r"^paused · "))).to_be_visible(timeout=TRAINING_MS)
    expect(button(train, "Pause")).to_be_disabled()
    assert "nothing is training" in button(train, "Pause").get_attribute("title")
    button(train, "Resume").click()
    done = re.compile(r"^completed · done · iteration (\d+)/\1")
    expect(train.get_by_text(done)).to_be_visible(timeout=TRAINING_MS)
    expect(train.get_by_text("Training failed")).to_have_count(0)
    assert_charts_look_finished(train)
    worst_light = assert_text_reads(train, dark=False)
    screenshot(studio, "train")
    checkpoints_on_disk = len([p for p in (lab.root / "sessions/quickstart/checkpoints")
                               .iterdir() if not p.name.startswith(".")])

    # A kernel restart, then only the Studio's cell again: the same session, all of it.
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session"
                  ".kernel.restart()")
    run_cell(page, 0)
    studio = page.locator(".widget-tab")
    expect(studio).to_have_count(1)
    train = open_tab(studio, "Train")
    expect(train.get_by_text(done)).to_be_visible(timeout=60_000)
    expect(train.get_by_text("Training failed")).to_have_count(0)
    expect(button(train, "Train more")).to_be_enabled()
    assert_charts_look_finished(train)  # the batch line came back from the session
    checkpoints = open_tab(studio, "Checkpoints")
    expect(checkpoints.locator(".noUi-handle")).to_have_attribute(
        "aria-valuemax", re.compile(rf"^{checkpoints_on_disk - 1}(\.0)?$"))

    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', "
                  "{theme: 'JupyterLab Dark'})")
    expect(page.locator('body[data-jp-theme-light="false"]')).to_have_count(1)
    train = open_tab(studio, "Train")
    worst_dark = assert_text_reads(train, dark=True)
    evaluate_heatmap_reads(studio, page)
    screenshot(studio, "train-dark")
    print(f"worst chart text contrast: light {worst_light:.2f}, dark {worst_dark:.2f}")
    # Train more in the reopened Studio: the charts follow (no "Error setting state").
    train_more_updates_the_charts(studio, RUN_ALL_BUDGET["MLWIDGETS_TUTORIAL_ITERATIONS"])
    assert console_errors == []


def evaluate_heatmap_reads(studio: Locator, page: Page) -> None:
    """The checkpoint's confusion matrix: no near-white tile glaring on the dark page."""
    checkpoints = open_tab(studio, "Checkpoints")
    expect(checkpoints.locator(".heatmaplayer image")).to_have_count(1)
    assert_text_reads(checkpoints, dark=True)


def voila_app(voila_server, tmp_path: Path, name: str, page: Page,
              monkeypatch: pytest.MonkeyPatch) -> Locator:
    """Voilà on tutorial `name`; returns its first Studio once shown (within 60 s)."""
    for variable, value in VOILA_BUDGET.items():  # Voilà's kernel inherits the environment
        monkeypatch.setenv(variable, str(value))
    notebook = tutorial(name, tmp_path, {})
    voila = voila_server(notebook)
    started = time.monotonic()
    # Voilà streams the page while it runs the cells: wait for the Studio, not for "load".
    page.goto(voila.url, wait_until="commit")
    studio = page.locator(".widget-tab").first
    expect(studio).to_be_visible(timeout=60_000)
    print(f"Voilà showed {name}'s Studio in {time.monotonic() - started:.1f} s")
    expect(page.get_by_text("Loading widget")).to_have_count(0)
    return studio


def train_more_updates_the_charts(studio: Locator, iterations: int) -> None:
    """From a finished run of `iterations`: Train more by 2, and every line grows."""
    train = open_tab(studio, "Train")
    expect(train.get_by_text(re.compile(
        rf"^completed · done · iteration {iterations}/{iterations}"))).to_be_visible(
        timeout=TRAINING_MS)
    before = loss_chart(train)["lines"]
    more_box = train.locator("input[type=number]").last  # beside Train more
    more_box.fill("2")
    more_box.press("Enter")
    button(train, "Train more").click()
    more = iterations + 2
    expect(train.get_by_text(re.compile(rf"^completed · done · iteration {more}/{more}"))
           ).to_be_visible(timeout=TRAINING_MS)
    # The charts followed: each line drawn further than before Train more.
    train.page.wait_for_function(
        "([panel, before]) => { const now = (" + _LOSS_CHART_JS + ")(panel);"
        " return now && ['training', 'validation', 'training (batches)'].every("
        "name => now.lines[name] && now.lines[name].last > before[name].last); }",
        arg=[train.element_handle(), before], timeout=60_000)


@pytest.mark.timeout(600)
def test_quickstart_in_voila_renders_in_a_minute_and_train_more_redraws(
        voila_server, tmp_path, page: Page, console_errors, monkeypatch, screenshot):
    studio = voila_app(voila_server, tmp_path, "01-quickstart.ipynb", page, monkeypatch)
    train_more_updates_the_charts(studio, VOILA_BUDGET["MLWIDGETS_TUTORIAL_ITERATIONS"])
    assert_charts_look_finished(open_tab(studio, "Train"))
    screenshot(page, "voila-quickstart")
    assert console_errors == []


@pytest.mark.timeout(600)
def test_own_images_in_voila_renders_in_a_minute_and_train_more_redraws(
        voila_server, tmp_path, page: Page, console_errors, monkeypatch):
    studio = voila_app(voila_server, tmp_path, "04-your-own-images.ipynb", page, monkeypatch)
    train_more_updates_the_charts(studio, VOILA_BUDGET["MLWIDGETS_TUTORIAL_ITERATIONS"])
    assert console_errors == []


def test_the_tutorials_copy_keeps_the_budget_in_the_parameter_cell(tmp_path):
    copy = tutorial("01-quickstart.ipynb", tmp_path, {"MLWIDGETS_TUTORIAL_ITERATIONS": 3})
    cell = next(c for c in nbformat.read(copy, as_version=4).cells if c.cell_type == "code")
    assert 'os.environ.get("MLWIDGETS_TUTORIAL_ITERATIONS", 3)' in cell.source
