"""`make lab` starts JupyterLab on notebooks/ and opens the quick start.

The environment is taken as installed (`make -o .venv/.installed`): this test must not
reinstall anything, and `make test` has just run the install step anyway.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, free_port, start_server, stop_process_group


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_make_lab_serves_the_notebooks_and_opens_the_quick_start(tmp_path: Path):
    port, token = free_port(), "make-lab-test"
    runtime = tmp_path / "runtime"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_PLATFORM_DIRS": "1",
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    args = f"--no-browser --port={port} --ServerApp.ip=127.0.0.1 --IdentityProvider.token={token}"
    base = f"http://127.0.0.1:{port}"
    lab = start_server(["make", "-o", ".venv/.installed", "lab", f"LAB_ARGS={args}"],
                       tmp_path / "lab.log", f"{base}/", timeout=120, cwd=ROOT, env=env)
    try:
        assert get_json(f"{base}/api/status?token={token}")
        root = get_json(f"{base}/api/contents?token={token}")
        assert "01-quickstart.ipynb" in {item["name"] for item in root["content"]}
        # The page a browser is sent to: the quick start, opened in JupyterLab.
        opened = "\n".join(p.read_text() for p in runtime.glob("jpserver-file-to-run-*.html"))
        assert "/lab/tree/01-quickstart.ipynb" in opened
    finally:
        stop_process_group(lab, grace=30)  # make and jupyter together
