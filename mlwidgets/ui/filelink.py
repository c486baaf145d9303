"""A download link to a file the kernel wrote, that works wherever the notebook is.

JupyterLab serves the files under its root at `<base url>files/<path from the root>`. The
browser knows the base URL (it differs under Binder or JupyterHub) but not the kernel's
files; the kernel knows its files and its working directory (the notebook's folder) but not
the URL. So Python sends the path relative to the server root and the browser adds the base.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import anywidget
import traitlets

log = logging.getLogger(__name__)

_ESM = """
function baseUrl() {
  const config = document.getElementById("jupyter-config-data");
  if (!config) return null;
  try {
    const base = JSON.parse(config.textContent).baseUrl || "/";
    return base.endsWith("/") ? base : base + "/";
  } catch (e) {
    return null;
  }
}

const encoded = (path) => path.split("/").map(encodeURIComponent).join("/");

function render({ model, el }) {
  const link = document.createElement("a");
  link.className = "mlwidgets-filelink";
  link.style.textDecoration = "underline";
  link.style.color = "var(--jp-content-link-color, #1976d2)";
  const update = () => {
    const base = baseUrl();
    // Without Jupyter's page config (VS Code, exported HTML) a path from the notebook's
    // folder, relative to the page, is the best guess.
    link.href = base === null ? encoded(model.get("local_path"))
                              : base + "files/" + encoded(model.get("path"));
    link.download = model.get("filename");
    link.textContent = model.get("text");
  };
  update();
  model.on("change", update);
  el.appendChild(link);
}
export default { render };
"""


class FileLink(anywidget.AnyWidget):
    """A link that downloads `path` through the Jupyter server's `files/` route."""

    _esm = _ESM
    path = traitlets.Unicode(
        help="the file's path from the Jupyter server root, '/'-separated (from the notebook's "
             "folder when the root is unknown)").tag(sync=True)
    local_path = traitlets.Unicode(
        help="the file's path from the kernel's working directory (the notebook's folder)"
    ).tag(sync=True)
    filename = traitlets.Unicode(help="the name the browser saves the file under").tag(sync=True)
    text = traitlets.Unicode(help="the link's text").tag(sync=True)

    def __init__(self, path: str | os.PathLike, text: str | None = None, **kwargs: object):
        self.file = Path(path).absolute()
        super().__init__(path=server_path(self.file), local_path=_posix_relpath(self.file),
                         filename=self.file.name, text=text or f"Download {self.file.name}",
                         **kwargs)


def server_path(file: str | os.PathLike, environ: Mapping[str, str] | None = None,
                cwd: str | os.PathLike | None = None) -> str:
    """`file`'s path from the Jupyter server root ('/'-separated), or from `cwd` if unknown."""
    file = Path(os.path.abspath(file))
    root = server_root(environ, cwd)
    if root is not None:
        try:
            return file.relative_to(root).as_posix()
        except ValueError:
            log.info("%s is outside the Jupyter server root %s; it cannot be served", file, root)
    return _posix_relpath(file, cwd)


def server_root(environ: Mapping[str, str] | None = None,
                cwd: str | os.PathLike | None = None) -> Path | None:
    """The directory the Jupyter server serves, as far as this kernel can tell, or None.

    Jupyter Server starts a kernel in its notebook's folder with `JPY_SESSION_NAME` set to the
    notebook's path. Servers before 2.11 gave the path from the root, from which the root
    follows; current ones give it absolute, so the root comes from the server's own
    `jpserver-<pid>.json` runtime file (the kernel's parent process is the server).
    """
    environ = os.environ if environ is None else environ
    cwd = Path(os.path.abspath(cwd or os.getcwd()))
    session_name = environ.get("JPY_SESSION_NAME", "")
    if session_name and not os.path.isabs(session_name):
        folder = PurePosixPath(session_name).parent.parts
        if not folder:
            return cwd
        if cwd.parts[-len(folder):] == folder:
            return Path(*cwd.parts[:-len(folder)])
    notebook = Path(session_name) if os.path.isabs(session_name) else cwd
    return _root_from_runtime_files(notebook, environ)


def _root_from_runtime_files(notebook: Path, environ: Mapping[str, str]) -> Path | None:
    """The root of the server that started this kernel, from the servers' runtime files."""
    try:
        from jupyter_core.paths import jupyter_runtime_dir

        runtime = Path(environ.get("JUPYTER_RUNTIME_DIR") or jupyter_runtime_dir())
        found = sorted(runtime.glob("jpserver-*.json"))
    except (ImportError, OSError):
        return None
    roots: list[tuple[int, Path]] = []
    for info_file in found:
        try:
            info = json.loads(info_file.read_text())
            root, pid = Path(info["root_dir"]), info.get("pid")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid == os.getppid():
            return root
        if notebook == root or root in notebook.parents:
            roots.append((len(root.parts), root))
    # Not started by a local server: the innermost root that holds the notebook.
    return max(roots)[1] if roots else None


def _posix_relpath(file: Path, start: str | os.PathLike | None = None) -> str:
    return PurePosixPath(*Path(os.path.relpath(file, start or os.getcwd())).parts).as_posix()
