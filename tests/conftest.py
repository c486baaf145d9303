"""Shared fixtures: a tiny generated dataset and one session trained on it.

Training is real (fastai on CPU) but small: 32 px images, a few iterations.
Tests that change a session work on a copy of the shared one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import mlwidgets as mw

ROOT = Path(__file__).resolve().parents[1]
TINY = mw.ModelParameters(algorithm="from_scratch", architecture="small_cnn", image_size=32,
                          batch_size=16, max_iterations=3, learning_rate=1e-2)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    mw.datasets.shapes(root, images_per_class=16, image_size=32,
                       classes=("circle", "square", "triangle"))
    return root


@pytest.fixture(scope="session")
def tiny_data(tiny_data_dir: Path) -> mw.DataSource:
    return mw.DataSource.labeled_directories(tiny_data_dir)


@pytest.fixture(scope="session")
def trained_dir(tiny_data: mw.DataSource, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session directory trained for 3 iterations, a checkpoint each (read-only use)."""
    directory = tmp_path_factory.mktemp("trained") / "session"
    session = mw.TrainingSession.create(tiny_data, TINY, directory)
    job = session.start()
    assert job.wait(300), "training did not finish in time"
    assert job.state == "completed", job.error
    return directory


@pytest.fixture(scope="session")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Weights a user would bring: a small_cnn body saved as safetensors (transfer learning
    without a download)."""
    import torch
    from safetensors.torch import save_file

    from mlwidgets.models import small_cnn

    torch.manual_seed(3)
    body, _ = small_cnn()
    path = tmp_path_factory.mktemp("weights") / "backbone.safetensors"
    save_file(body.state_dict(), str(path))
    return str(path)


@pytest.fixture
def trained_copy(trained_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the trained session, for tests that change it."""
    copy = tmp_path / "session"
    shutil.copytree(trained_dir, copy)
    return copy


def run_python(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python process (a new kernel, as far as the session knows)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def seen_event(session: mw.TrainingSession, kind: str, timeout: float) -> bool:
    """Wait until the session's events include one of `kind` (e.g. the first "report" or
    "checkpoint" of a run in another process), as a viewer of the session sees them."""
    from mlwidgets.follow import SessionFollower

    seen = threading.Event()
    follower = SessionFollower(session)
    follower.start(lambda events: any(e["type"] == kind for e in events) and seen.set(),
                   interval=0.1)
    try:
        return seen.wait(timeout)
    finally:
        follower.stop()
