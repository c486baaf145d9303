"""A process killed with SIGKILL while training leaves a session that loads and resumes."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

import mlwidgets as mw

TRAINER = textwrap.dedent("""
    import sys
    import mlwidgets as mw
    data = mw.DataSource.labeled_directories(sys.argv[1])
    params = mw.ModelParameters(algorithm="from_scratch", architecture="small_cnn",
                                image_size=32, batch_size=8, max_iterations=40)
    session = mw.TrainingSession.create(data, params, sys.argv[2])
    def show(event):  # one write a line: events come from the training and writer threads
        sys.stdout.write(f"{event['type']} {event.get('step', 0)}\\n")
        sys.stdout.flush()
    session.on_event(show)
    session.start().wait()
""")


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_step", [1, 4, 9, 14])
def test_sigkill_at_any_moment_leaves_a_loadable_resumable_session(
        tiny_data_dir, tmp_path, kill_after_step):
    session_dir = tmp_path / "session"
    child = subprocess.Popen([sys.executable, "-c", TRAINER, str(tiny_data_dir), str(session_dir)],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        for line in child.stdout:  # each line is an event the child has just emitted
            kind, step = line.split()
            if int(step) >= kill_after_step:
                os.kill(child.pid, signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait(60)
    assert child.returncode == -signal.SIGKILL

    session = mw.TrainingSession.restore(session_dir)
    assert session.state == "interrupted"
    for checkpoint in session.checkpoints:  # every listed checkpoint is whole
        checkpoint.verify()
        mw.ImageClassifier.from_checkpoint(checkpoint)
    done = session.latest_checkpoint.iteration if session.latest_checkpoint else 0
    job = session.resume(iterations=done + 1)
    assert job.wait(300) and job.state == "completed", job.error
    assert session.latest_checkpoint.iteration == done + 1
    leftovers = [p.name for p in session.store.directory.iterdir() if p.name.startswith(".")]
    assert leftovers == []
