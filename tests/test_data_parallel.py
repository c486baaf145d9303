"""Data-parallel training in 2 CPU worker processes (gloo): every phase completes, rank 0
alone writes, metrics count real samples only, and a killed worker stops the run cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import seen_event

import mlwidgets as mw
from mlwidgets import features

pytestmark = pytest.mark.slow
PARAMETERS = mw.ModelParameters(algorithm="from_scratch", architecture="small_cnn",
                                image_size=16, batch_size=8, max_iterations=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory, backbone):
    root = tmp_path_factory.mktemp("dp")
    mw.datasets.shapes(root / "shapes", images_per_class=40, image_size=32,
                       classes=("circle", "square", "triangle"))
    return mw.DataSource.labeled_directories(root / "shapes"), backbone


def train(data, params, directory, processes):
    session = mw.TrainingSession.create(data, params, directory)
    runner = "process" if processes > 1 else "thread"
    job = session.start(runner, processes)
    assert job.wait(600) and session.state == "completed", job.error
    return session


def test_training_from_scratch_in_two_workers(data, tmp_path):
    source, _ = data
    session = train(source, PARAMETERS, tmp_path / "s", processes=2)
    reports = [e for e in session.events if e["type"] == "report"]
    assert [e["iteration"] for e in reports] == [1, 2]  # rank 0 alone reports
    train_images = len(session.split[0])
    per_iteration = reports[0]["step"]
    # Each optimizer step saw a batch on each worker: half the steps of one process.
    assert per_iteration == train_images // PARAMETERS.batch_size // 2
    for checkpoint in session.checkpoints:
        checkpoint.verify()
        assert mw.ImageClassifier.from_checkpoint(checkpoint).classes == session.classes
    # The validation accuracy counts each image once (padding repeats none).
    valid = len(session.split[1])
    accuracy = session.checkpoints[-1].metrics["valid_accuracy"]
    assert round(accuracy * valid, 6) == int(round(accuracy * valid))


def test_two_workers_paused_inside_an_iteration_resume_exactly(data, tmp_path):
    source, _ = data
    reference = train(source, PARAMETERS, tmp_path / "reference", processes=2)
    at_step = reference.checkpoints[0].step_number + 1  # inside the second iteration
    session = mw.TrainingSession.create(source, PARAMETERS, tmp_path / "paused")
    session.start("process", 2)
    checkpoint = session.pause(at_step=at_step, timeout=600)
    assert session.state == "paused" and checkpoint.partial
    assert len(checkpoint.resume["rank_totals"]) == 2  # each worker's running totals
    assert session.resume(runner="process", processes=2).wait(600)
    a = reference.latest_checkpoint.load_model_state()
    b = session.latest_checkpoint.load_model_state()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    whole = [c for c in session.checkpoints if not c.partial]
    assert [c.metrics for c in whole] == [c.metrics for c in reference.checkpoints]


def test_every_transfer_learning_phase_in_two_workers_matches_one(data, tmp_path):
    source, backbone = data
    params = PARAMETERS.replace(algorithm="transfer_learning", weights_file=backbone,
                                max_iterations=30, fine_tune_iterations=1, learning_rate=3e-2)
    two = train(source, params, tmp_path / "two", processes=2)
    one = train(source, params, tmp_path / "one", processes=1)
    assert [c.phase for c in two.checkpoints] == [c.phase for c in one.checkpoints]
    # Features sharded over the workers come back in the split's order, the same values.
    a = features.find(one.directory / features.FEATURES_DIR, one.feature_key()).tensors
    b = features.find(two.directory / features.FEATURES_DIR, two.feature_key()).tensors
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key
    head = [c for c in two.checkpoints if c.phase == "training"][-1]
    head_one = [c for c in one.checkpoints if c.phase == "training"][-1]
    assert abs(head.metrics["valid_accuracy"] - head_one.metrics["valid_accuracy"]) <= 0.03 + \
        1 / len(one.split[1])  # within 3 points, give or take one image
    restored = mw.ImageClassifier.from_checkpoint(two.checkpoints[-1])
    assert restored.predict(one.split[1][0].path).label in one.classes


def test_a_killed_worker_stops_the_run_and_it_resumes(data, tmp_path):
    source, _ = data
    session = mw.TrainingSession.create(source, PARAMETERS.replace(max_iterations=300),
                                        tmp_path / "s")
    job = session.start("process", 2)
    assert seen_event(session, "report", 300)
    worker = rank_one(job.pid)
    os.kill(worker, signal.SIGKILL)
    started = time.monotonic()
    assert job.wait(120), "the other worker hung"
    assert time.monotonic() - started < 60
    assert session.state in ("interrupted", "failed")
    for checkpoint in session.checkpoints:
        checkpoint.verify()  # only whole checkpoints
    job = session.resume(iterations=session.latest_checkpoint.iteration + 1)
    assert job.wait(300) and session.state == "completed", job.error


def rank_one(launcher_pid: int) -> int:
    """The worker process of rank 1 under the launcher."""
    found = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True)
    for line in found.stdout.splitlines()[1:]:
        pid, ppid, *args = line.split()
        if int(ppid) == launcher_pid and "mlwidgets.worker" in " ".join(args):
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if b"RANK=1" in environ.read().split(b"\0"):
                    return int(pid)
    raise AssertionError(f"no rank-1 worker under {launcher_pid}: {found.stdout}")


if sys.platform != "linux":
    pytest.skip("reads /proc to find a worker", allow_module_level=True)
