"""Checkpoint commits off the training thread: training goes on while a checkpoint is
written, at most one commit is in flight, a small one is written at once, and nothing
reads or ends before it is whole."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import TINY

import mlwidgets as mw
from mlwidgets.checkpoint_store import CheckpointStore
from mlwidgets.commits import SMALL_SNAPSHOT_BYTES, BackgroundCommits, snapshot_bytes


def test_one_commit_in_flight_and_errors_come_back():
    commits, release, order = BackgroundCommits(), threading.Event(), []

    def slow():
        release.wait(60)
        order.append("first")

    commits.submit(slow)
    assert commits.in_flight
    threading.Timer(0.05, release.set).start()
    commits.submit(lambda: order.append("second"))  # waits for the first
    commits.wait()
    assert order == ["first", "second"] and not commits.in_flight
    commits.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        commits.wait()
    commits.wait()  # raised once


def test_training_goes_on_while_a_checkpoint_is_written(tiny_data, tmp_path, monkeypatch):
    session = mw.TrainingSession.create(tiny_data, TINY.replace(max_iterations=3),
                                        tmp_path / "s")
    trained_meanwhile = threading.Event()
    writing = threading.Event()
    real_commit = CheckpointStore.commit

    def commit_waiting_for_training(store, **snapshot):
        if snapshot["iteration"] == 1:  # hold the first commit until training has gone on
            writing.set()
            assert trained_meanwhile.wait(120), "training waited for the commit"
        return real_commit(store, **snapshot)

    monkeypatch.setattr(CheckpointStore, "commit", commit_waiting_for_training)
    # Iteration 2's report comes from the training thread once it has trained the whole
    # iteration: only possible while iteration 1's checkpoint is still being written.
    session.on_event(lambda e: writing.is_set() and e["type"] == "report"
                     and e["iteration"] == 2 and trained_meanwhile.set())
    job = session.start()
    assert job.wait(300) and session.state == "completed", job.error
    # The run ended only once every checkpoint was whole, in order, each announced.
    assert [c.iteration for c in session.checkpoints] == [1, 2, 3]
    announced = [e["id"] for e in session.events if e["type"] == "checkpoint"]
    assert announced == [c.id for c in session.checkpoints]


def test_a_failed_background_commit_fails_the_run(tiny_data, tmp_path, monkeypatch):
    session = mw.TrainingSession.create(tiny_data, TINY.replace(max_iterations=3),
                                        tmp_path / "s")

    def disk_full(store, **snapshot):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CheckpointStore, "commit", disk_full)
    job = session.start()
    assert job.wait(300) and session.state == "failed"
    assert "No space left" in str(job.error) and session.checkpoints == []


def test_a_small_snapshot_is_written_at_once_and_a_big_one_in_the_background():
    commits, threads = BackgroundCommits(), []
    commits.submit(lambda: threads.append(threading.current_thread()),
                   nbytes=SMALL_SNAPSHOT_BYTES - 1)
    assert threads == [threading.current_thread()] and not commits.in_flight
    commits.submit(lambda: threads.append(threading.current_thread()),
                   nbytes=SMALL_SNAPSHOT_BYTES)
    commits.wait()
    assert len(threads) == 2 and threads[1] is not threading.current_thread()


def test_a_snapshots_bytes_count_every_tensor_in_it():
    model = {"w": torch.zeros(10), "b": torch.zeros(2, dtype=torch.float64)}
    optimizer = {"state": [{"step": 3, "exp_avg": torch.zeros(4, 5)}], "hypers": [{"lr": 0.1}]}
    assert snapshot_bytes(model, optimizer) == 10 * 4 + 2 * 8 + 20 * 4
