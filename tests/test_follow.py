"""Following a session: every recorded event once, live loss from this process, and a
session trained by another process seen from this one."""

import subprocess
import sys
import threading

from conftest import ROOT, TINY

import mlwidgets as mw
from mlwidgets.follow import SessionFollower


def test_a_follower_sees_each_recorded_event_once_and_the_live_loss(tiny_data, tmp_path):
    session = mw.TrainingSession.create(tiny_data, TINY.replace(max_iterations=2), tmp_path / "s")
    follower = SessionFollower(session)
    seen: list[dict] = []
    finished = threading.Event()

    def deliver(events):
        seen.extend(events)
        if any(e["type"] == "state" and e["state"] == "completed" for e in events):
            finished.set()

    follower.start(deliver, interval=0.05)
    session.start()
    assert finished.wait(300)
    follower.stop()
    seen.extend(follower.poll())
    recorded = [e for e in seen if e["type"] not in ("batch", "progress")]
    assert sorted(map(repr, recorded)) == sorted(map(repr, session.events))
    assert any(e["type"] == "batch" for e in seen)
    assert [e["time"] for e in seen] == sorted(e["time"] for e in seen)


def test_a_session_trained_by_another_process_is_followed(tiny_data, tmp_path):
    session = mw.TrainingSession.create(tiny_data, TINY.replace(max_iterations=3), tmp_path / "s")
    follower = SessionFollower(session)
    trainer = subprocess.Popen(
        [sys.executable, "-m", "mlwidgets", "resume", "--session", str(session.directory)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[dict] = []
    finished = threading.Event()

    def deliver(events):
        seen.extend(events)
        if any(e["type"] == "state" and e["state"] != "running" for e in events):
            finished.set()

    follower.start(deliver, interval=0.05)
    try:
        assert finished.wait(300), trainer.stderr
    finally:
        follower.stop()
        out, err = trainer.communicate(timeout=60)
    assert trainer.returncode == 0, err
    assert [e["iteration"] for e in seen if e["type"] == "report"] == [1, 2, 3]
    assert [e["id"] for e in seen if e["type"] == "checkpoint"] == \
        [c.id for c in session.checkpoints]
    assert session.state == "completed"  # the record was re-read when the state changed


def test_a_follower_can_start_at_the_end(trained_dir):
    session = mw.TrainingSession.restore(trained_dir)
    assert SessionFollower(session, from_start=False).poll() == []
    assert len(SessionFollower(session).poll()) == len(session.events)
