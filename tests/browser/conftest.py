"""Real-browser fixtures: JupyterLab and Voilà driven in headless Debian chromium by Playwright.

The recipe is guides/browser-tests.md (named in DESIGN.md). In short:

- `lab` (per test) / `jupyter_server` (per session): one JupyterLab server on a free port with a
  random token, its config, runtime, settings and workspace directories in a temp dir, and
  `lab.root` as the directory tests write notebooks into. `lab.open(page, "x.ipynb")` returns
  once the notebook's kernel session is ready; `lab.run_all(page)` runs every cell and fails on
  a cell error.
- `voila_server(notebook)`: starts Voilà on that notebook; `.url` is the page to open.
- `page` comes from pytest-playwright (so `--screenshot`, `--tracing`, `--video` work), launched
  on /usr/bin/chromium with a tall viewport.
- `console_errors`: the browser console's errors on `page` (assert it stays empty); ignores
  only failed loads of non-local (CDN) resources.
- `screenshot(target, name)`: saves a page or locator screenshot, returns its Path.
- `write_notebook(path, cells)`: writes code cells with nbformat (`lab.notebook(name, cells)`
  writes into `lab.root`).

Every test in this directory gets the `browser` marker and a timeout. Without chromium the
tests skip, except under CI (env `CI` set), where they fail. `make test` installs chromium
with apt-get where there is one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import ConsoleMessage, Locator, Page, expect
from servers import free_port, stop_process_group, wait_until_answering

HERE = Path(__file__).resolve().parent
CHROMIUM = Path("/usr/bin/chromium")
IN_CI = bool(os.environ.get("CI"))
# Without the background-networking flags Chromium keeps retrying closed network connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Seconds a browser test may take in all (setup included) unless it sets its own timeout mark.
BROWSER_TEST_TIMEOUT = 180
# Playwright's `expect` gives up after 5 s by default; on 2 busy cores a kernel round trip or a
# widget's first render can take longer than that.
expect.set_options(timeout=20_000)
# None: `[anywidget] Failed to initialize model.` meant a chart that stopped following its
# figure (ui/plotly_bundle.py removed its cause), so every console error fails a test.
HARMLESS_CONSOLE_ERRORS: tuple[re.Pattern[str], ...] = ()
# Servers under test run here; a resource elsewhere (Voilà's template takes Font Awesome from
# cdn.jsdelivr.net) fails to load only because these machines are offline.
LOCAL_URL = re.compile(r"^(https?|wss?)://(127\.0\.0\.1|localhost)[:/]")
# JupyterLab user settings: no news pop-up in screenshots; cells out of view stay in the DOM.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


# --- collection: marker, timeout, skip -------------------------------------------------------

def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = (f"{CHROMIUM} is missing: `make chromium` (run by `make test`) installs it with "
              "apt-get (under CI these tests fail instead of skipping)")
    for item in items:
        if HERE not in item.path.parents:
            continue
        item.add_marker(pytest.mark.browser)
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(BROWSER_TEST_TIMEOUT))
        if not CHROMIUM.exists() and not IN_CI:
            item.add_marker(pytest.mark.skip(reason=reason))


# --- pytest-playwright overrides --------------------------------------------------------------

@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing; `make chromium` installs it with apt-get")
    # Playwright cannot download its own browsers here; it drives Debian's through CDP.
    return {"headless": True, **browser_type_launch_args,
            "executable_path": str(CHROMIUM), "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict) -> dict:
    # Tall, so that a notebook's widgets and charts are all in one screenshot.
    return {**browser_context_args, "viewport": {"width": 1400, "height": 1400}}


# --- small helpers ----------------------------------------------------------------------------

def write_notebook_file(path: Path, cells: Sequence[str]) -> Path:
    """Write a Python 3 notebook whose code cells are `cells` (sources, in order)."""
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in cells],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}},
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


def isolated_jupyter_env(base: Path) -> dict[str, str]:
    """Environment whose Jupyter config, data, runtime, settings and workspaces live in `base`."""
    dirs = {name: base / name.lower() for name in (
        "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
        "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR")}
    for directory in dirs.values():
        directory.mkdir(parents=True, exist_ok=True)
    for name, settings in LAB_SETTINGS.items():
        path = dirs["JUPYTERLAB_SETTINGS_DIR"] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    env = {**os.environ, **{name: str(d) for name, d in dirs.items()}}
    env["JUPYTER_PLATFORM_DIRS"] = "1"  # silences jupyter_core's deprecation warning
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- JupyterLab -------------------------------------------------------------------------------

# Resolves once the app is started and restored and the current widget is the notebook at
# `path` with its file loaded and its kernel session ready.
_OPEN_JS = """async ([path, timeoutMs]) => {
  const app = window.jupyterapp;
  await app.started;
  await app.restored;
  const deadline = Date.now() + timeoutMs;
  let panel = app.shell.currentWidget;
  while (!(panel && panel.context && panel.context.path === path)) {
    if (Date.now() > deadline) {
      throw new Error(`notebook ${path} did not become the current widget`);
    }
    await new Promise(resolve => setTimeout(resolve, 100));
    panel = app.shell.currentWidget;
  }
  await panel.context.ready;
  await panel.sessionContext.ready;
  return panel.sessionContext.session?.kernel?.name ?? null;
}"""

# Runs all cells of the current notebook; returns the error outputs ("ename: evalue").
_RUN_ALL_JS = """async ([timeoutMs]) => {
  const app = window.jupyterapp;
  const panel = app.shell.currentWidget;
  const timeout = new Promise((_, reject) => setTimeout(
    () => reject(new Error(`run all cells took more than ${timeoutMs} ms`)), timeoutMs));
  await Promise.race([app.commands.execute('notebook:run-all-cells'), timeout]);
  const errors = [];
  for (const cell of panel.content.model.cells) {
    if (cell.type !== 'code') continue;
    for (const output of cell.outputs.toJSON()) {
      if (output.output_type === 'error') errors.push(`${output.ename}: ${output.evalue}`);
    }
  }
  return errors;
}"""


@dataclass
class JupyterLab:
    """A running JupyterLab server; `root` is its root directory (tests write notebooks there)."""

    url: str
    token: str
    root: Path
    log: Path
    process: subprocess.Popen

    def notebook(self, name: str, cells: Sequence[str]) -> Path:
        """Write notebook `name` (relative to root) from code-cell sources; return its path."""
        return write_notebook_file(self.root / name, cells)

    def open(self, page: Page, name: str, timeout: float = 60) -> None:
        """Open notebook `name` (relative to root); return when its kernel session is ready."""
        page.goto(f"{self.url}/lab/tree/{name}?token={self.token}&reset")
        page.wait_for_function("() => window.jupyterapp !== undefined", timeout=timeout * 1000)
        page.evaluate(_OPEN_JS, [name, timeout * 1000])

    def run_all(self, page: Page, timeout: float = 120) -> None:
        """Run all cells of the open notebook; return when they finished, fail on a cell error."""
        errors = page.evaluate(_RUN_ALL_JS, [timeout * 1000])
        assert not errors, f"cells raised: {errors}"

    def api(self, method: str, path: str, body: object = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", method=method, data=data,
                                         headers={"Authorization": f"token {self.token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def stop_sessions(self) -> None:
        """Delete every session, which shuts down its kernel."""
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")

    def reset_theme(self) -> None:
        """Back to the light theme: a test that switched to dark must not leave the next
        test's page dark (JupyterLab saves the choice in its settings)."""
        self.api("PUT", "/lab/api/settings/@jupyterlab/apputils-extension:themes",
                 {"raw": json.dumps({"theme": "JupyterLab Light"})})


@pytest.fixture(scope="session")
def jupyter_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    """One JupyterLab server for the whole session (use `lab` in tests: it also stops kernels)."""
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "notebooks"
    root.mkdir()
    port, token = free_port(), secrets.token_hex(16)
    log = base / "server.log"
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
        f"--port={port}", f"--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=root, env=isolated_jupyter_env(base),
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = JupyterLab(f"http://127.0.0.1:{port}", token, root, log, process)
    try:
        wait_until_answering(f"{server.url}/api/status?token={token}", process, log)
        yield server
    finally:
        try:
            if process.poll() is None:
                server.stop_sessions()
        except OSError:
            pass
        stop_process_group(process)


@pytest.fixture
def lab(jupyter_server: JupyterLab) -> Iterator[JupyterLab]:
    """The session's JupyterLab server; kernels the test started are shut down after it."""
    yield jupyter_server
    jupyter_server.stop_sessions()
    jupyter_server.reset_theme()


# --- Voilà ------------------------------------------------------------------------------------

@dataclass
class Voila:
    url: str
    log: Path
    process: subprocess.Popen


@pytest.fixture
def voila_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Path], Voila]]:
    """Factory: `voila_server(notebook_path)` starts Voilà on it; stopped after the test."""
    started: list[Voila] = []

    def start(notebook: Path, timeout: float = 60) -> Voila:
        base = tmp_path_factory.mktemp("voila")
        port, log = free_port(), base / "voila.log"
        command = [sys.executable, "-m", "voila", str(notebook), "--no-browser",
                   f"--port={port}", "--Voila.ip=127.0.0.1"]
        with log.open("wb") as out:
            process = subprocess.Popen(command, cwd=Path(notebook).parent,
                                       env=isolated_jupyter_env(base), stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        server = Voila(f"http://127.0.0.1:{port}/", log, process)
        started.append(server)
        # Not "/": that would render the notebook (start a kernel) just to check readiness.
        wait_until_answering(f"{server.url}voila/static/", process, log, timeout)
        return server

    yield start
    for server in started:
        stop_process_group(server.process)


# --- browser-side helpers ---------------------------------------------------------------------

@pytest.fixture
def write_notebook() -> Callable[[Path, Sequence[str]], Path]:
    """`write_notebook(path, cells)` writes code cells (sources) as a notebook, returns path."""
    return write_notebook_file


@pytest.fixture
def console_errors(page: Page) -> list[str]:
    """Errors the browser reports on `page` from now on (console errors, uncaught exceptions)."""
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        if any(pattern.search(message.text) for pattern in HARMLESS_CONSOLE_ERRORS):
            return
        where = message.location.get("url", "")
        if message.text.startswith("Failed to load resource") and not LOCAL_URL.match(where):
            return
        errors.append(f"{message.text} ({where})" if where else message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    return errors


@pytest.fixture
def screenshot(request: pytest.FixtureRequest,
               tmp_path: Path) -> Callable[[Page | Locator, str], Path]:
    """`screenshot(page_or_locator, name)` saves NAME.png and returns its Path.

    Into $MLWIDGETS_SCREENSHOTS/<test name>/ when that is set (CI artifacts), else the test's
    pytest tmp dir.
    """
    if os.environ.get("MLWIDGETS_SCREENSHOTS"):
        test_name = re.sub(r"[^\w.-]+", "_", request.node.name).strip("_")
        directory = Path(os.environ["MLWIDGETS_SCREENSHOTS"]) / test_name
    else:
        directory = tmp_path / "screenshots"

    def save(target: Page | Locator, name: str) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.png"
        if isinstance(target, Page):
            target.screenshot(path=path, full_page=True)
        else:
            target.screenshot(path=path)
        return path

    return save
