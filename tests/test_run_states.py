"""Typed run states: the exact sequence of states for each path a run takes, which actions
each state allows, and one observer policy (a failing observer stops nothing)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, TINY

import mlwidgets as mw
from mlwidgets.events import Observers, RunState


def states_seen(session):
    seen = []
    session.on_event(lambda e: seen.append(e["state"]) if e["type"] == "state" else None)
    return seen


def test_start_pause_resume_complete(tiny_data, tmp_path):
    session = mw.TrainingSession.create(tiny_data, TINY, tmp_path / "s")
    seen = states_seen(session)
    assert session.state is RunState.INITIALIZED
    session.start()
    session.pause(at_step=3, timeout=300)
    assert session.state is RunState.PAUSED
    assert session.resume().wait(300)
    assert seen == ["running", "pausing", "paused", "running", "completed"]
    assert session.state is RunState.COMPLETED
    recorded = [e["state"] for e in session.events if e["type"] == "state"]
    assert recorded == seen
    assert json.loads((session.directory / "session.json").read_text())["state"] == "completed"


def test_start_then_cancel(tiny_data, tmp_path):
    session = mw.TrainingSession.create(tiny_data, TINY, tmp_path / "s")
    seen = states_seen(session)
    session.on_event(lambda e: session.cancel(wait=False) if e["type"] == "batch" else None)
    assert session.start().wait(300)
    assert seen == ["running", "cancelled"]
    assert session.checkpoints == []  # stopped inside the first iteration: nothing committed


def test_a_failing_run_ends_failed_with_its_error(tiny_data, tmp_path):
    session = mw.TrainingSession.create(tiny_data, TINY, tmp_path / "s",
                                        image_cache_mb=0)
    seen = states_seen(session)
    missing = session.split[0][0].path
    session.record.split[0][0] = type(session.split[0][0])(tmp_path / "gone.png", "circle")
    job = session.start()
    assert job.wait(300)
    assert seen == ["running", "failed"]
    assert session.state is RunState.FAILED and job.error is not None
    failed = [e for e in session.events if e["type"] == "state"][-1]
    assert "gone.png" in failed["error"] and missing.exists()
    with pytest.raises(RuntimeError, match="training failed: .*gone.png"):
        _ = job.result


KILLED = textwrap.dedent("""
    import sys, time
    import mlwidgets as mw
    from conftest import TINY
    data = mw.DataSource.labeled_directories(sys.argv[1])
    session = mw.TrainingSession.create(data, TINY.replace(max_iterations=50), sys.argv[2])
    session.on_event(lambda e: print(e["type"], flush=True) if e["type"] == "batch" else None)
    session.start().wait()
""")


def test_a_killed_run_reads_as_interrupted_and_resumes(tiny_data_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    child = subprocess.Popen([sys.executable, "-c", KILLED, str(tiny_data_dir),
                              str(tmp_path / "s")], stdout=subprocess.PIPE, text=True,
                             cwd=ROOT, env=env)
    try:
        assert child.stdout.readline().strip() == "batch"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(60)
    stored = json.loads((tmp_path / "s" / "session.json").read_text())["state"]
    session = mw.TrainingSession.restore(tmp_path / "s")
    assert stored == "running" and session.state is RunState.INTERRUPTED
    assert session.state.allows("resume") and not session.state.allows("pause")
    job = session.resume()
    session.pause(at_step=job.run.step + 1, timeout=300)
    assert session.state is RunState.PAUSED


def test_each_state_allows_the_actions_a_user_expects():
    allowed = {s.value: sorted(s.actions) for s in RunState}
    assert allowed == {
        "initialized": ["start"], "running": ["pause", "stop"], "pausing": ["stop"],
        "paused": ["resume", "train_more"], "completed": ["train_more"],
        "cancelled": ["resume", "train_more"], "failed": ["resume", "train_more"],
        "interrupted": ["resume", "train_more"]}
    with pytest.raises(ValueError, match="unknown action"):
        RunState.RUNNING.allows("jump")
    assert f"{RunState.PAUSED}" == "paused" and RunState.PAUSED == "paused"


def test_train_more_raises_the_budget_and_continues(trained_copy):
    session = mw.TrainingSession.restore(trained_copy)
    assert session.state is RunState.COMPLETED and session.iterations == 3
    assert session.train_more(2).wait(300)
    assert session.iterations == 5 and session.latest_checkpoint.iteration == 5
    with pytest.raises(ValueError, match="whole number"):
        session.train_more(0)


def test_a_failing_observer_stops_neither_training_nor_the_others(tiny_data, tmp_path):
    session = mw.TrainingSession.create(tiny_data, TINY.replace(max_iterations=1),
                                        tmp_path / "s")
    seen = []

    def broken(event):
        raise RuntimeError("observer bug")

    session.on_event(broken)
    session.on_event(seen.append)
    assert session.start().wait(300) and session.state is RunState.COMPLETED
    assert {e["type"] for e in seen} >= {"state", "report", "checkpoint"}
    assert "observer bug" in session.observer_errors[0]


def test_observers_unsubscribe_and_isolate_failures():
    observers, calls = Observers(), []
    unsubscribe = observers.subscribe(lambda e: calls.append(("a", e["n"])))
    observers.subscribe(lambda e: 1 / 0)
    observers.subscribe(lambda e: calls.append(("c", e["n"])))
    observers.dispatch({"n": 1})
    unsubscribe()
    unsubscribe()  # a second call is harmless
    observers.dispatch({"n": 2})
    assert calls == [("a", 1), ("c", 1), ("c", 2)]
    assert len(observers.errors) == 2 and "ZeroDivisionError" in observers.errors[0]


def test_pause_and_stop_reach_a_trainer_through_the_control_file(tiny_data, tmp_path):
    """What `mlwidgets pause` and another kernel use: a request in the session directory."""
    # Long enough that the request (looked for every 0.25 s) arrives before the end.
    session = mw.TrainingSession.create(tiny_data, TINY.replace(max_iterations=200),
                                        tmp_path / "s")
    other = mw.TrainingSession.restore(tmp_path / "s")  # as another process sees it
    seen = states_seen(session)
    session.on_event(lambda e: other.pause(wait=False) if e["type"] == "batch" else None)
    assert session.start().wait(300)
    assert session.state is RunState.PAUSED and session.latest_checkpoint is not None
    assert seen == ["running", "pausing", "paused"]
    assert not (tmp_path / "s" / "control.json").exists()


def test_a_session_read_while_pausing_keeps_every_state_event(tiny_data, tmp_path):
    """What a viewer in another process reads mid-pause: session.json says "pausing"."""
    session = mw.TrainingSession.create(tiny_data, TINY, tmp_path / "s")
    seen_pausing = []

    def read_it_elsewhere(event):
        if event["type"] == "state" and event["state"] == "pausing":
            elsewhere = mw.TrainingSession.restore(tmp_path / "s")
            seen_pausing.append((elsewhere.state, [e["state"] for e in elsewhere.events
                                                   if e["type"] == "state"]))

    session.on_event(read_it_elsewhere)
    session.start()
    session.pause(at_step=2, timeout=300)
    assert seen_pausing == [(RunState.PAUSING, ["running", "pausing"])]
