"""Training sessions: jobs, events, observers, pause/resume, restore in a new process."""

import json
import threading

import numpy as np
import pytest
from conftest import TINY, run_python

import mlwidgets as mw


def read_events(directory):
    return [json.loads(line) for line in (directory / "events.jsonl").read_text().splitlines()]


def test_a_finished_session_holds_its_checkpoints_events_and_state(trained_dir):
    session = mw.TrainingSession.restore(trained_dir)
    assert session.state == "completed"
    assert [c.iteration for c in session.checkpoints] == [1, 2, 3]
    steps = [c.step_number for c in session.checkpoints]
    assert steps == sorted(steps) and steps[0] > 0
    kinds = [e["type"] for e in read_events(trained_dir)]
    assert kinds[0] == "state" and kinds[-1] == "state"
    assert kinds.count("report") == 3 and kinds.count("checkpoint") == 3
    for c in session.checkpoints:
        assert set(c.metrics) >= {"train_loss", "train_accuracy", "valid_loss", "valid_accuracy"}
        assert all(isinstance(v, float) for v in c.metrics.values())
    progress = session.progress
    assert (progress.state, progress.phase, progress.iteration) == ("completed", "done", 3)
    record = json.loads((trained_dir / "session.json").read_text())
    assert record["classes"] == ["circle", "square", "triangle"]
    assert record["parameters"]["image_size"] == 32 and record["data"]["fingerprint"]


def test_each_checkpoint_carries_its_validation_confusion_matrix(trained_dir):
    session = mw.TrainingSession.restore(trained_dir)
    valid = session.split[1]
    for c in session.checkpoints:
        matrix = np.array(c.confusion)
        assert matrix.shape == (3, 3) and matrix.sum() == len(valid)
        assert np.trace(matrix) / len(valid) == pytest.approx(c.metrics["valid_accuracy"])
        true_counts = [sum(i.label == k for i in valid) for k in session.classes]
        assert matrix.sum(axis=1).tolist() == true_counts
        assert c.to_dict()["confusion"] == c.confusion


def test_intervals_decide_reports_and_checkpoints(tiny_data, tmp_path):
    session = mw.TrainingSession.create(tiny_data, TINY.replace(max_iterations=5),
                                        tmp_path / "s", report_interval=2, checkpoint_interval=2)
    job = session.start()
    assert job.wait(300) and job.state == "completed", job.error
    reports = [e["iteration"] for e in read_events(session.directory) if e["type"] == "report"]
    assert reports == [2, 4, 5]  # every 2nd, and always the last
    assert [c.iteration for c in session.checkpoints] == [2, 4, 5]


def test_observers_see_batches_and_a_failing_observer_does_not_stop_training(
        tiny_data, tmp_path, capfd):
    session = mw.TrainingSession.create(tiny_data, TINY.replace(max_iterations=2), tmp_path / "s")
    seen = []
    session.on_event(seen.append)

    def broken(event):
        raise ZeroDivisionError("observer bug")

    session.on_event(broken)
    job = session.start()
    assert job.wait(300) and job.state == "completed", job.error
    kinds = {e["type"] for e in seen}
    assert {"batch", "report", "checkpoint", "state"} <= kinds
    batch = next(e for e in seen if e["type"] == "batch")
    assert batch["loss"] > 0 and batch["step"] >= 1
    assert "batch" not in {e["type"] for e in read_events(session.directory)}
    assert session.observer_errors and "observer bug" in session.observer_errors[0]
    out, err = capfd.readouterr()
    assert out == "" and err == "", "training printed into the caller's output"


def test_pause_commits_and_resume_continues_numbering(tiny_data, tmp_path):
    session = mw.TrainingSession.create(tiny_data, TINY.replace(max_iterations=4), tmp_path / "s")
    first_report, reported, asked = {}, threading.Event(), threading.Event()

    def hold_at_first_report(event):
        # The training thread waits here until the pause below is asked: on a fast machine
        # the other 3 iterations could otherwise end before it arrives.
        if event["type"] == "report" and not reported.is_set():
            first_report.update(event)
            reported.set()
            asked.wait(300)

    session.on_event(hold_at_first_report)
    # Published by pause() in this thread, once the request is in place.
    session.on_event(lambda e: e.get("state") == "pausing" and asked.set())
    job = session.start()
    assert reported.wait(300)
    at_step = first_report["step"] + 1  # iteration 2's first batch: a pause inside it
    paused_at = session.pause(timeout=300, at_step=at_step)
    assert job.state == "paused" and session.state == "paused"
    assert paused_at is not None and paused_at == session.latest_checkpoint
    assert paused_at.partial and paused_at.step_number == at_step
    assert paused_at.iteration == 1  # iterations done: the second is under way
    before = [c.id for c in session.checkpoints]

    restored = mw.TrainingSession.restore(session.directory)
    assert restored.state == "paused"
    job = restored.resume()
    assert job.wait(300) and job.state == "completed", job.error
    after = restored.checkpoints
    assert [c.id for c in after[:len(before)]] == before  # nothing overwritten
    assert after[-1].iteration == 4
    steps = [c.step_number for c in after]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)


def test_resume_with_more_iterations_raises_the_budget(trained_copy):
    session = mw.TrainingSession.restore(trained_copy)
    with pytest.raises(ValueError, match="resume"):
        session.start()  # all 3 iterations are done
    job = session.resume(iterations=5)
    assert job.wait(300) and job.state == "completed", job.error
    assert [c.iteration for c in session.checkpoints] == [1, 2, 3, 4, 5]
    assert mw.TrainingSession.restore(trained_copy).iterations == 5
    with pytest.raises(ValueError, match="not more than"):
        session.resume(iterations=2)


def test_restore_in_a_new_process_gives_everything_back_and_can_resume(trained_copy):
    result = run_python("""
        import json, sys
        import mlwidgets as mw
        s = mw.TrainingSession.restore(sys.argv[1])
        before = len(s.checkpoints)
        job = s.resume(iterations=4)
        job.wait()
        print(json.dumps({"state": job.state, "classes": s.classes, "before": before,
                          "after": [c.iteration for c in s.checkpoints],
                          "events": len(s.events), "size": s.parameters.image_size}))
    """, str(trained_copy))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["state"] == "completed" and out["classes"] == ["circle", "square", "triangle"]
    assert out["before"] == 3 and out["after"] == [1, 2, 3, 4] and out["size"] == 32
    assert out["events"] > 8


def test_cancel_stops_without_a_new_checkpoint(tiny_data, tmp_path):
    session = mw.TrainingSession.create(tiny_data, TINY.replace(max_iterations=50), tmp_path / "s")
    first_batch, asked = threading.Event(), threading.Event()

    def hold_at_first_batch(event):
        # The training thread waits here until the cancel below is asked, so it lands inside
        # the first iteration on any machine (not after that iteration's checkpoint).
        if event["type"] == "batch" and not first_batch.is_set():
            first_batch.set()
            asked.wait(300)

    session.on_event(hold_at_first_batch)
    job = session.start()
    assert first_batch.wait(300)
    session.cancel(wait=False)
    asked.set()
    assert job.wait(300)
    assert job.state == "cancelled" and session.checkpoints == []


def test_a_second_start_while_training_is_refused(tiny_data, tmp_path):
    session = mw.TrainingSession.create(tiny_data, TINY.replace(max_iterations=50), tmp_path / "s")
    running, checked = threading.Event(), threading.Event()
    session.on_event(lambda e: e.get("state") == "running" and running.set())
    # Training waits at its first batch until the checks below are done: a fast machine
    # could otherwise finish all 50 iterations before they look.
    session.on_event(lambda e: e["type"] == "batch" and checked.wait(300))
    job = session.start()
    try:
        with pytest.raises(RuntimeError, match="already training"):
            session.start()
        assert running.wait(300)
        other = mw.TrainingSession.restore(session.directory)
        assert other.state == "running"  # the lock is held by this process
    finally:
        checked.set()
        session.cancel(timeout=300)
    assert job.done


def test_a_training_failure_is_reported_not_raised_in_the_thread(tiny_data_dir, tmp_path):
    import shutil

    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data_dir)
    data = mw.DataSource.labeled_directories(data_dir)
    session = mw.TrainingSession.create(data, TINY, tmp_path / "s")
    victim = session.split[0][0].path
    victim.unlink()  # the data changes after the session was made
    seen = []
    session.on_event(seen.append)
    job = session.start()
    assert job.wait(300) and job.state == "failed"
    assert victim.name in str(job.error)
    failed = [e for e in seen if e["type"] == "state" and e["state"] == "failed"]
    assert failed and victim.name in failed[0]["error"]
    with pytest.raises(RuntimeError, match="training failed"):
        _ = job.result


def test_a_session_directory_is_never_reused_by_accident(trained_dir, tiny_data, tmp_path):
    # The same request reopens the session (create or restore); another one is refused.
    with pytest.raises(FileExistsError, match="already holds a training session"):
        mw.TrainingSession.create(tiny_data, TINY.replace(seed=1), trained_dir)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        mw.TrainingSession.create(tiny_data, TINY, tmp_path / "busy")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        mw.TrainingSession.restore(tmp_path / "nowhere")


def test_validation_choices(tiny_data, tmp_path):
    none = mw.TrainingSession.create(tiny_data, TINY.replace(validation="none"), tmp_path / "a")
    assert none.split[1] == [] and len(none.split[0]) == len(tiny_data)
    half = mw.TrainingSession.create(tiny_data, TINY.replace(validation=0.5), tmp_path / "b")
    assert len(half.split[1]) == len(tiny_data) // 2
    separate = mw.TrainingSession.create(tiny_data, TINY.replace(validation=tiny_data),
                                         tmp_path / "c")
    assert len(separate.split[1]) == len(tiny_data)
    assert json.loads((tmp_path / "c" / "session.json").read_text())[
        "parameters"]["validation"] == "data_source"
