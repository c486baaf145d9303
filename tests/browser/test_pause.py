"""The Studio's Pause button works at any moment: pause inside an iteration, resume, finish."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from .test_studio import button, open_tab

# Small batches: an iteration has many of them, so a click lands inside one.
PARAMETERS = ('mw.ModelParameters(algorithm="from_scratch", architecture="small_cnn", '
              'image_size=32, batch_size=4, max_iterations=20)')
NOTEBOOK = [
    "import mlwidgets as mw",
    'data = mw.datasets.shapes(images_per_class=30, classes=("circle", "square", "triangle"))',
    f'studio = mw.Studio(data, {PARAMETERS}, session_dir="paused-session")\nstudio',
]
TRAINING_MS = 180_000


@pytest.mark.timeout(600)  # up to six runs of a few iterations; 2 busy cores can take minutes
def test_pause_inside_an_iteration_then_resume_and_finish(lab, page: Page, console_errors):
    lab.notebook("pause.ipynb", NOTEBOOK)
    lab.open(page, "pause.ipynb")
    lab.run_all(page)
    studio = page.locator(".widget-tab")
    train = open_tab(studio, "Train")
    button(train, "Start").click()
    expect(train.get_by_text(re.compile(r"^running · training · iteration [1-9]"))).to_be_visible(
        timeout=TRAINING_MS)
    # A click may also land while an iteration ends (validation, its checkpoint); that
    # pause is legitimate but keeps a whole checkpoint, so resume and click again.
    for _ in range(5):
        train = open_tab(studio, "Train")
        button(train, "Pause").click()
        paused = train.get_by_text(re.compile(r"^paused · training · iteration \d+/20 · step \d+"))
        expect(paused).to_be_visible(timeout=TRAINING_MS)
        expect(button(train, "Resume")).to_be_enabled()
        expect(button(train, "Pause")).to_be_disabled()
        step = int(re.search(r"step (\d+)", paused.inner_text()).group(1))
        checkpoints = open_tab(studio, "Checkpoints")
        try:
            # The timeline's label (the compare list names it too).
            expect(checkpoints.get_by_text(f"paused at step {step}").first).to_be_visible(
                timeout=20_000)
            break
        except AssertionError:  # paused at an iteration's end: its whole checkpoint stands
            train = open_tab(studio, "Train")
            button(train, "Resume").click()
            expect(train.get_by_text(re.compile(
                rf"^running · training · iteration \d+/20 · step (?!{step}\b)\d+"))
            ).to_be_visible(timeout=TRAINING_MS)
    else:
        pytest.fail("five Pause clicks all landed at an iteration's end")

    train = open_tab(studio, "Train")
    button(train, "Resume").click()
    expect(train.get_by_text(re.compile(r"^completed · done · iteration 20/20"))).to_be_visible(
        timeout=TRAINING_MS)
    assert console_errors == []
