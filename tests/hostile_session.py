"""The tiny trained session every hostile case damages a copy of, and helpers to do it.

A test module makes its fixtures from these (one session per module):
    made = pytest.fixture(scope="module", name="made")(hostile_session.make_session)
    case = pytest.fixture(name="case")(hostile_session.make_case)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hostile_guard import within

import mlwidgets as mw
from mlwidgets import schemas
from mlwidgets.checkpoints import Checkpoint
from mlwidgets.files import sha256_bytes

LIMIT = 10  # seconds a case may take


def make_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """photos/ (2 classes of 6) and session/ trained 2 iterations, a checkpoint each."""
    base = tmp_path_factory.mktemp("hostile")
    data = mw.datasets.shapes(base / "shapes", images_per_class=6, image_size=16,
                              classes=("circle", "square"))
    params = mw.ModelParameters(algorithm="from_scratch", architecture="small_cnn",
                                image_size=16, batch_size=8, max_iterations=2)
    session = mw.TrainingSession.create(data, params, base / "session")
    job = session.start()
    assert job.wait(300), "training did not finish in time"
    assert len(session.checkpoints) == 2
    # Warm up every code path the cases take, so their lazy imports happen unguarded.
    restored = mw.TrainingSession.restore(base / "session")
    mw.ImageClassifier.from_checkpoint(restored.checkpoints[-1])
    restored.checkpoints[-1].load_optimizer_state()
    return base


def make_case(made: Path, tmp_path: Path) -> Path:
    """A private copy of the session (its images stay where they were made), plus an
    `elsewhere/` folder that nothing may open."""
    shutil.copytree(made / "session", tmp_path / "session", symlinks=True)
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def session_of(case: Path) -> Path:
    return case / "session"


def checkpoint_dirs(case: Path) -> list[Path]:
    return sorted((session_of(case) / "checkpoints").iterdir())


def run(case: Path, fn):
    """fn() within the time limit, nothing opened in elsewhere/: (result, error)."""
    return within(LIMIT, fn, forbidden=(str(case / "elsewhere"),))


def listing(case: Path):
    """Restore and list: (usable ids, {damaged id: error})."""
    session = mw.TrainingSession.restore(session_of(case))
    return [c.id for c in session.checkpoints], session.store.damaged


def load_latest(case: Path):
    directory = checkpoint_dirs(case)[-1]
    checkpoint = Checkpoint.from_directory(directory)
    return mw.ImageClassifier.from_checkpoint(checkpoint)


def record_of(directory: Path) -> dict:
    record = json.loads((directory / "checkpoint.json").read_bytes())
    record.pop("digest", None)
    return record


def rewrite(directory: Path, change, sign: bool = True) -> None:
    """Change checkpoint.json's record; `sign`: recompute its digest, as a sender could."""
    record = record_of(directory)
    change(record)
    data = schemas.encode_record(record) if sign else json.dumps(record).encode()
    (directory / "checkpoint.json").write_bytes(data)


def replace_file(directory: Path, name: str, data: bytes) -> None:
    """Put `data` in `name` and record its true size and sha256 (a sender who re-signs)."""
    (directory / name).write_bytes(data)
    rewrite(directory, lambda r: r["files"].__setitem__(
        name, {"sha256": sha256_bytes(data), "size": len(data)}))


