"""`make lab` starts JupyterLab on notebooks/ and opens the quick start.

The environment is taken as installed (`make -o .venv/.installed`): this test must not
reinstall anything, and `make test` has just run the install step anyway.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest
from servers import free_port, stop_process_group, wait_until_answering

ROOT = Path(__file__).resolve().parents[1]


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
    log = (tmp_path / "lab.log").open("wb")
    lab = subprocess.Popen(["make", "-o", ".venv/.installed", "lab", f"LAB_ARGS={args}"],
                           cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)  # its own group: make and jupyter stop together
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_answering(f"{base}/api/status?token={token}", lab, tmp_path / "lab.log",
                             timeout=120)

        root = get_json(f"{base}/api/contents?token={token}")
        assert "01-quickstart.ipynb" in {item["name"] for item in root["content"]}
        # The page a browser is sent to: the quick start, opened in JupyterLab.
        opened = "\n".join(p.read_text() for p in runtime.glob("jpserver-file-to-run-*.html"))
        assert "/lab/tree/01-quickstart.ipynb" in opened
    finally:
        stop_process_group(lab, grace=30)
        log.close()
